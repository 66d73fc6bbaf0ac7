"""What every command shares: one main wrapper that turns exceptions into
`prog: error: ...` lines and exit codes, and a few argument helpers.

Exit codes: 0 ok, 1 error, 2 usage, 128+N on signal N. Silent on a broken
pipe (`rq | head`). Tracebacks only with RMS_DEBUG=1.
"""
from __future__ import annotations

import os
import sys


class UsageError(Exception):
    """Bad command-line usage: exit 2."""


class CommandError(Exception):
    """A failure to report as `prog: error: <message>`: exit 1."""


def run_main(prog: str, body, argv: list[str] | None = None) -> int:
    """Run body(argv) and map what it raises to messages and exit codes."""
    from rmsbatch.net.client import ClientError

    if argv is None:
        argv = sys.argv[1:]
    try:
        code = body(argv)
        sys.stdout.flush()
        return code or 0
    except BrokenPipeError:
        # Keep Python from complaining again at interpreter exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        import signal
        return 128 + signal.SIGINT
    except UsageError as exc:
        _report(prog, exc)     # one line: messages carry their own hints
        return 2
    except (CommandError, ClientError, ValueError, OSError) as exc:
        if os.environ.get("RMS_DEBUG"):
            raise
        _report(prog, exc)
        return 1


def _report(prog: str, exc: BaseException) -> None:
    message = str(exc) or exc.__class__.__name__
    if isinstance(exc, OSError) and exc.strerror:
        message = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    print(f"{prog}: error: {message}", file=sys.stderr)


def emit(text: str) -> int:
    """Print a command's output (nothing at all when empty); exit status 0."""
    if text:
        sys.stdout.write(text + "\n")
    return 0


def job_filters(args, keys: tuple[str, ...]) -> dict:
    """The request fields for the job filters a command line gave (-u, --me, -A, ...)."""
    fields: dict = {}
    users = list(getattr(args, "users", None) or [])
    if getattr(args, "me", False):
        from rmsbatch.cli.optiontypes import current_user
        users.append(current_user())
    if users:
        fields["users"] = users
    for key in keys:
        value = getattr(args, key)
        if value:
            fields[key] = value
    return fields


def exit_with(prog: str, body) -> None:
    sys.exit(run_main(prog, body))


def quick_exit(main) -> None:
    """Run a command's `main` and end the process without the interpreter's teardown:
    freeing every module and object costs a short command such as `rsub` about 4 ms
    of wall and CPU time after its work is done, on the CPUs the job it submitted is
    starting on. Output is flushed first; an exception other than SystemExit (a bug)
    still ends the normal way, with its traceback."""
    os._exit(finish(main))


def finish(main) -> int:
    """Run a command's `main`, flush its output, and return its exit code (what
    quick_exit ends with, and what the command server reports to its caller)."""
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass                    # `rq | head`: the reader left, as run_main allows
    except OSError as exc:      # `rq > file` on a full disk
        prog = os.path.basename(sys.argv[0])
        print(f"{prog}: error: cannot write the output: {exc.strerror or exc}",
              file=sys.stderr)
        code = code or 1
    try:
        sys.stderr.flush()
    except OSError:
        pass
    return code
