"""Trace-driven simulation (rms-sim): workload trace readers and replay."""
