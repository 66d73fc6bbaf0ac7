"""rms-client: run rsub, rq or rcancel the ordinary way, or serve them.

The installed rsub, rq and rcancel are small programs that have their command run in a
fork of the user's command server (rmsbatch.cli.cmdserver), where Python is already
started. Where that server is not there yet, they exec `rms-client COMMAND ARGS...`,
which runs the command in this process, and start the server in the background with
`rms-client --serve SOCKET`. Nothing is imported here beyond what the command needs.
"""
import sys

COMMANDS = ("rsub", "rq", "rcancel")

USAGE = """usage: rms-client COMMAND [ARGS...]
       rms-client --serve SOCKET

Runs rsub, rq or rcancel in this process, as the small programs of the same names do
when their user's command server is not running (and as they always do with
RMS_CMDSERVER=off). --serve runs a command server on SOCKET, in a directory only its
user can enter; those programs start it themselves when needed.

Examples:
  rms-client rq -j 42           the queue entry of job 42, without the server
  RMS_CMDSERVER=off rsub job.sh  the same for one rsub, through the small program
  RMS_CMDSERVER_LOG=$HOME/rms-client.log rq
                                where no server runs yet: start one that notes there
                                each call it serves or declines
"""


def build_parser():
    """The command line, for rms-completion (main reads its few words itself)."""
    import argparse
    parser = argparse.ArgumentParser(prog="rms-client", add_help=True,
                                     description="Run rsub, rq or rcancel, or serve them.")
    parser.add_argument("--serve", metavar="SOCKET", help="run a command server on SOCKET")
    parser.add_argument("command", nargs="?", choices=COMMANDS, help="the command to run")
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        sys.stdout.write(USAGE)
        sys.exit(0)
    if len(argv) == 2 and argv[0] == "--serve":
        from rmsbatch.cli.cmdserver import serve
        sys.exit(serve(argv[1]))
    if not argv or argv[0] not in COMMANDS:
        print(f"rms-client: error: {argv[0] if argv else 'no command'}: name the command to "
              f"run: rsub, rq or rcancel (rms-client --help)", file=sys.stderr)
        sys.exit(2)
    from rmsbatch.cli.common import quick_exit
    sys.argv = argv
    quick_exit(__import__(f"rmsbatch.cli.{argv[0]}", fromlist=["main"]).main)


if __name__ == "__main__":
    main()
