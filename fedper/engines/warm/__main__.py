"""`python -m fedper.engines.warm`: start a SuperNode's ClientApp processes warm."""

import sys

from fedper.engines.warm import main

sys.exit(main())
