"""`python -m ttt_bench ...` is `ttt-bench ...`."""

import sys

from ttt_bench.cli import main

sys.exit(main())
