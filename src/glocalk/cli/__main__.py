"""``python -m glocalk.cli``."""

import sys

from glocalk.cli.app import main

sys.exit(main())
