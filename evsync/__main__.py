"""``python -m evsync`` runs the command line."""

import sys

from evsync.cli import main

sys.exit(main())
