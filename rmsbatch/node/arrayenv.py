"""The job environment of an array task: RMS_ARRAY_* and SLURM_ARRAY_* (only in arrays)."""
from __future__ import annotations


def array_environment(job: dict) -> dict[str, str]:
    """From the launch order's array keys (rmsbatch.ctld.waits.array_launch_keys)."""
    array = job.get("array")
    if job.get("array_job_id") is None or not array:
        return {}
    values = {"JOB_ID": job["array_job_id"], "TASK_ID": job["array_task_id"],
              "TASK_COUNT": array["COUNT"], "TASK_MIN": array["MIN"],
              "TASK_MAX": array["MAX"], "TASK_STEP": array["STEP"]}
    env = {}
    for key, value in values.items():
        env[f"RMS_ARRAY_{key}"] = env[f"SLURM_ARRAY_{key}"] = str(value)
    return env
