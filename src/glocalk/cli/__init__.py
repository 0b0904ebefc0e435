"""The ``glocalk`` command: one thin module per command family; ``main`` maps errors to messages."""

from glocalk.cli.app import main

__all__ = ["main"]
