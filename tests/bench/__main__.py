"""`python -m tests.bench [--quick] [--only NAME] [--no-slurm]` from the repository root."""
from tests.bench.run import main

main()
