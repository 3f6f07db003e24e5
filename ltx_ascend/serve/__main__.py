"""`python -m ltx_ascend.serve`: the same as `ltx-serve`."""

import sys

from ltx_ascend.serve.cli import main

sys.exit(main())
