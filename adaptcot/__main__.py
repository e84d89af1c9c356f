"""`python -m adaptcot ...` is the `adaptcot` command."""

import sys

from adaptcot.job.cli import main

sys.exit(main())
