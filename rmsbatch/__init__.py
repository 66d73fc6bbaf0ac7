"""rmsbatch: a Slurm-style batch system for clusters of AI accelerators."""

__version__ = "0.1.0"
