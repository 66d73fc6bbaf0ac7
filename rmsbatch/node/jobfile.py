"""job.json: what a run is, as rmsd wrote it for the supervisor, validated again
(the supervisor trusts no file it did not write); and where its output goes.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field

NO_VALUE = 4294967294           # what Slurm writes for %a / %s outside arrays / steps
DEFAULT_OUTPUT = "rms-%j.out"
DEFAULT_KILL_GRACE = 30
MAX_PAD = 10                    # Slurm caps the zero-padding width


def expand_pattern(pattern: str, *, job_id: int, name: str, user: str, node: str,
                   array_job_id: int | None = None,
                   array_task_id: int | None = None) -> str:
    """Expand a Slurm-style output file pattern.

    A backslash anywhere disables expansion (backslashes are removed).  A
    number between `%` and the letter zero-pads numeric fields (`%4j`);
    it is ignored for text fields.  Unknown `%` sequences are kept as is.
    """
    if "\\" in pattern:
        return pattern.replace("\\", "")
    numeric = {
        "j": job_id, "J": job_id,
        "A": array_job_id if array_job_id is not None else job_id,
        "a": array_task_id if array_task_id is not None else NO_VALUE,
        "n": 0, "t": 0, "s": NO_VALUE,
    }
    text = {"x": name, "u": user, "N": node}
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        j = i + 1
        while j < n and "0" <= pattern[j] <= "9":
            j += 1
        if j >= n:                          # trailing "%" or "%12": literal
            out.append(pattern[i:])
            break
        width, letter = pattern[i + 1:j], pattern[j]
        if letter == "%" and not width:
            out.append("%")
        elif letter in numeric:
            pad = min(int(width), MAX_PAD) if width else 0
            out.append(str(numeric[letter]).zfill(pad))
        elif letter in text:
            out.append(str(text[letter]))
        else:
            out.append(pattern[i:j + 1])
        i = j + 1
    return "".join(out)


class JobFileError(ValueError):
    """job.json is missing or malformed; the message says why."""


@dataclass
class Job:
    job_id: int
    uid: int
    gid: int
    script_path: str
    workdir: str
    environment: dict[str, str]
    name: str = ""
    user: str = ""
    groups: list[int] = field(default_factory=list)
    home: str = ""
    argv: list[str] = field(default_factory=list)
    submit_dir: str = ""
    output: str | None = None
    error: str | None = None
    time_limit: int = 0
    kill_grace: int = DEFAULT_KILL_GRACE
    node: str = ""
    notify_socket: str | None = None
    array_job_id: int | None = None
    array_task_id: int | None = None
    isolation: dict | None = None           # limits for rmsbatch.node.isolation
    gpus: list[int] = field(default_factory=list)
    # The lease (rmsbatch.node.lease): {"until", "lease_s", "file", "controller", "run",
    # "retry_s"}; None runs the job without one (tests, tools).
    lease: dict | None = None
    umask: int | None = None                # the submitter's, unless config says not
    rlimits: dict[str, list] | None = None  # name -> [soft, hard] to propagate
    # --signal: {"signal": N, "seconds": S, "batch": bool}, sent S s before the time limit
    signal: dict | None = None
    open_mode: str = "truncate"             # --open-mode, "append" on a requeued run
    # Holds a multi-node job's allocation on a node other than the first (no script of
    # the user's): it tells rmsd once its part is set up (--wait-all-nodes).
    holder: bool = False


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def isinstance_of(kind):
    return lambda v: isinstance(v, kind)


def parse_job(data) -> Job:
    """Validate the decoded job.json; raise JobFileError naming the bad key."""
    if not isinstance(data, dict):
        raise JobFileError("job.json is not a JSON object")

    def need(key, check, what, default=KeyError):
        if key not in data:
            if default is KeyError:
                raise JobFileError(f"job.json: missing key {key!r}")
            return default
        value = data[key]
        if not check(value):
            raise JobFileError(f"job.json: {key!r} must be {what}, not {value!r:.80}")
        return value

    def opt_int(v):
        return v is None or _is_int(v)

    def opt_str(v):
        return v is None or isinstance(v, str)

    def abs_path(v):
        return isinstance(v, str) and os.path.isabs(v)

    def str_list(v):
        return isinstance(v, list) and all(isinstance(x, str) for x in v)

    def int_list(v):
        return isinstance(v, list) and all(_is_int(x) and x >= 0 for x in v)

    def env(v):
        return isinstance(v, dict) and all(
            isinstance(k, str) and isinstance(x, str) and k and "=" not in k and "\0" not in k + x
            for k, x in v.items())

    def nonneg(v):
        return _is_int(v) and v >= 0

    def lease(v):
        return v is None or (isinstance(v, dict) and isinstance(v.get("until"), (int, float))
                             and isinstance(v.get("lease_s"), (int, float))
                             and _is_int(v.get("run")))

    def rlimits(v):
        return v is None or (isinstance(v, dict) and all(
            isinstance(k, str) and isinstance(x, list) and len(x) == 2
            and all(_is_int(n) and n >= -1 for n in x) for k, x in v.items()))

    job_id = need("job_id", nonneg, "a non-negative integer")
    uid = need("uid", nonneg, "a non-negative integer")
    gid = need("gid", nonneg, "a non-negative integer")
    script_path = need("script_path", abs_path, "an absolute path")
    return Job(
        job_id=job_id, uid=uid, gid=gid, script_path=script_path,
        workdir=need("workdir", abs_path, "an absolute path"),
        environment=need("environment", env, "an object of strings"),
        name=need("name", isinstance_of(str), "a string", None) or os.path.basename(script_path),
        user=need("user", isinstance_of(str), "a string", None) or str(uid),
        groups=need("groups", int_list, "a list of group ids", None) or [gid],
        home=need("home", isinstance_of(str), "a string", ""),
        argv=need("argv", str_list, "a list of strings", None) or [],
        submit_dir=need("submit_dir", isinstance_of(str), "a string", ""),
        output=need("output", opt_str, "a string or null", None) or None,
        error=need("error", opt_str, "a string or null", None) or None,
        time_limit=need("time_limit", nonneg, "a non-negative integer", 0),
        kill_grace=need("kill_grace", nonneg, "a non-negative integer", DEFAULT_KILL_GRACE),
        node=need("node", isinstance_of(str), "a string", None) or socket.gethostname(),
        notify_socket=need("notify_socket", opt_str, "a string or null", None) or None,
        array_job_id=need("array_job_id", opt_int, "an integer or null", None),
        array_task_id=need("array_task_id", opt_int, "an integer or null", None),
        isolation=need("isolation", lambda v: v is None or isinstance(v, dict),
                       "an object or null", None),
        gpus=need("gpus", int_list, "a list of GPU indices", None) or [],
        lease=need("lease", lease, "an object with until, lease_s and run, or null", None),
        umask=need("umask", lambda v: v is None or (_is_int(v) and 0 <= v <= 0o777),
                   "a mode between 0 and 0o777, or null", None),
        rlimits=need("rlimits", rlimits, "an object of [soft, hard] pairs, or null", None),
        holder=need("holder", isinstance_of(bool), "true or false", False),
        **parse_control(data.get("control")),
    )


def parse_control(control) -> dict:
    """job.json "control" (--signal, --open-mode) as Job fields; absent: neither."""
    if control is None:
        return {}
    if not isinstance(control, dict):
        raise JobFileError("job.json: 'control' must be an object")
    sig = control.get("signal")
    if sig is not None and not (
            isinstance(sig, dict) and _is_int(sig.get("signal")) and 1 <= sig["signal"] <= 64
            and _is_int(sig.get("seconds")) and sig["seconds"] >= 0
            and isinstance(sig.get("batch"), bool)):
        raise JobFileError(f"job.json: 'control.signal' must be {{signal, seconds, batch}}, "
                           f"not {sig!r:.80}")
    mode = control.get("open_mode", "truncate")
    if mode not in ("append", "truncate"):
        raise JobFileError(f"job.json: 'control.open_mode' must be append or truncate, "
                           f"not {mode!r:.80}")
    return {"signal": sig, "open_mode": mode}


def load_job(path: str) -> Job:
    try:
        with open(path, encoding="utf-8") as f:
            raw = f.read()
    except OSError as e:
        raise JobFileError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise JobFileError(f"malformed {path}: {e}") from None
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise JobFileError(f"malformed {path}: {e}") from None
    return parse_job(data)


def output_paths(job: Job) -> tuple[str, str]:
    """Absolute stdout and stderr paths (equal when both go to one file)."""
    def resolve(pattern: str) -> str:
        path = expand_pattern(pattern, job_id=job.job_id, name=job.name, user=job.user,
                              node=job.node, array_job_id=job.array_job_id,
                              array_task_id=job.array_task_id)
        return os.path.normpath(os.path.join(job.workdir, path))

    out = resolve(job.output or DEFAULT_OUTPUT)
    err = resolve(job.error) if job.error else out
    return out, err
