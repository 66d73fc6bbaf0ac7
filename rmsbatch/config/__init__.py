"""Configuration: the files under etc/ as validated models (`models`), loaded and
cross-checked into one `Config` (`load`)."""
from rmsbatch.config.load import Config, ConfigError, GpuDef, NodeDef, load

__all__ = ["Config", "ConfigError", "GpuDef", "NodeDef", "load"]
