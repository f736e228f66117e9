"""`python -m dispatcher` runs the command line."""

import sys

from dispatcher.cli import main

sys.exit(main())
