"""``python -m sluicegate.sim simulate ...`` (the same command as ``sluicegate simulate``)."""

import sys

from sluicegate.cli import main

sys.exit(main())
