"""`python -m fedper.plot ...`."""

import sys

from fedper.plot.cli import main

sys.exit(main())
