"""``python -m s2ap.report``: see :mod:`s2ap.report.cli`."""

import sys

from s2ap.report.cli import main

sys.exit(main())
