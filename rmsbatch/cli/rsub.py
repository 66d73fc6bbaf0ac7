"""rsub: submit a batch job (like sbatch)."""
from __future__ import annotations

import os
import sys

from rmsbatch.cli.common import UsageError, exit_with


def body(argv: list[str]) -> int:
    from rmsbatch.net import client
    from rmsbatch.cli import jobscript

    def parse(stdin_text):
        return jobscript.parse_rsub(argv, stdin_text=stdin_text, environ=dict(os.environ),
                                    cwd=os.getcwd(), hostname=os.uname().nodename)

    try:
        try:
            sub = parse(None)
        except jobscript.ScriptError as exc:
            # No script named: the script comes on stdin, unless that is a terminal.
            if "no job script given" not in str(exc) or sys.stdin is None or sys.stdin.isatty():
                raise
            sub = parse(_read_stdin())
    except jobscript.HelpRequested as exc:
        print(exc.text if hasattr(exc, "text") else str(exc))
        return 0
    except jobscript.OptionError as exc:
        raise UsageError(str(exc)) from None
    sub.spec.umask, sub.spec.rlimits = _inherited()
    with client.Client() as conn:
        reply = conn.call("submit", spec=sub.spec.to_dict())
        job_id = reply["job_id"]
        print(job_id if sub.parsable else f"Submitted batch job {job_id}", flush=True)
        if not sub.wait:
            return 0
    # an array: every task (their ids follow the array's), as sbatch --wait does
    jobs = [_wait(client, i) for i in range(job_id, job_id + reply.get("tasks", 1))]
    failed = [j for j in jobs if j["state"] != "COMPLETED"]
    if not failed:
        return 0
    for job in failed[:10]:
        code, sig = job.get("exit_code") or 0, job.get("exit_signal") or 0
        name = job_id if "tasks" not in reply else f"{job_id}_{job['array_task_id']}"
        why = f": {job['end_reason']}" if job.get("end_reason") else ""
        print(f"rsub: job {name} ended {job['state']} (exit code {code}:{sig}){why}",
              file=sys.stderr)
    if len(failed) > 10:
        print(f"rsub: ... and {len(failed) - 10} more tasks of array {job_id} did not "
              f"complete (rsacct -j {job_id} lists them)", file=sys.stderr)
    # the highest exit code of any task, as sbatch --wait
    codes = [j.get("exit_code") or 0 for j in failed]
    if max(codes):
        return max(codes)
    sigs = [j.get("exit_signal") or 0 for j in failed]
    return 128 + max(sigs) if max(sigs) else 1


def _inherited() -> tuple[int, dict]:
    """What the job inherits from this shell, as under Slurm: the umask, and the
    resource limits ([soft, hard], -1 for unlimited); the node decides which apply."""
    import resource
    from rmsbatch.core.jobspec import RLIMIT_NAMES
    mask = os.umask(0o022)      # the only way to read it is to set it
    os.umask(mask)
    limits = {}
    for name in RLIMIT_NAMES:
        try:
            soft, hard = resource.getrlimit(getattr(resource, "RLIMIT_" + name))
        except (AttributeError, ValueError, OSError):
            continue
        limits[name] = [-1 if soft == resource.RLIM_INFINITY else soft,
                        -1 if hard == resource.RLIM_INFINITY else hard]
    return mask, limits


def _wait(client, job_id: int) -> dict:
    """Block until the job ends; ride out a controller restart meanwhile."""
    import time
    retry_until = None
    while True:
        try:
            with client.Client(timeout=None) as conn:
                job = conn.call("wait", job_id=job_id)["job"]
                return job
        except client.ControllerUnavailable:
            now = time.monotonic()
            retry_until = retry_until or now + 300
            if now > retry_until:
                raise
            time.sleep(0.5)


def _read_stdin() -> str:
    from rmsbatch.core.jobspec import MAX_SCRIPT_BYTES
    data = sys.stdin.buffer.read(MAX_SCRIPT_BYTES + 1)
    if len(data) > MAX_SCRIPT_BYTES:
        raise ValueError(f"script on stdin is larger than {MAX_SCRIPT_BYTES // (1 << 20)} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("script on stdin is not text (binary file?)") from None


def main() -> None:
    exit_with("rsub", body)


if __name__ == "__main__":
    main()
