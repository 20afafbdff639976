"""``python -m stream_detector``: the same command line as ``stream-detector`` (``cli.main``), for
environments where the console script is not on ``PATH``."""

import sys

from .cli import main

sys.exit(main())
