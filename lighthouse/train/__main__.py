"""`python -m lighthouse.train ...` (what torchrun launches): the same flags as `lighthouse train`."""

import sys

from lighthouse.train.cli import main

sys.exit(main())
