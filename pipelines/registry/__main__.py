"""`python -m pipelines.registry ...`, the same as `python -m pipelines registry ...`."""

import sys

from pipelines.registry.cli import main

sys.exit(main())
