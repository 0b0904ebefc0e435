"""``python -m glocalk`` (and ``torchrun ... -m glocalk``): the ``glocalk`` command."""

import sys

from glocalk.cli.app import main

sys.exit(main())
