"""`python -m tests.bench [--quick] [--only NAME] [--no-slurm]` from the repository root."""
import sys

from tests.bench.run import main

sys.exit(main())
