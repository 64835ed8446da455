"""``python -m sphc`` runs the command line."""

import sys

from sphc.apps.cli import main

sys.exit(main())
