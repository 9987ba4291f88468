"""``python -m torchcompress`` runs the command line (see :mod:`torchcompress.cli`)."""

import sys

from .cli import main

sys.exit(main())
