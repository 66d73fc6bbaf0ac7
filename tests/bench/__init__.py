"""rmsbatch vs Slurm 22.05, side by side in one run: see tests/bench/README.md."""
