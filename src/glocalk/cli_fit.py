"""Placeholder: own-data commands (fit, evaluate, predict, recommend) are being added here."""


def register(sub) -> None:  # noqa: D103
    return None
