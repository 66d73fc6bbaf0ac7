"""rshare: fair-share shares, usage and factors of accounts and users, like sshare.

One "shares" request (the controller computes from its usage as it is now), then a
table: the account tree, each account's users under it.
"""
from __future__ import annotations

import argparse

from rmsbatch.net import client
from rmsbatch.cli.arguments import CommandParser, add_output_options, comma_list
from rmsbatch.cli.common import emit, exit_with

PROG = "rshare"

EXAMPLES = """
  rshare                        every account, and your own lines under each
  rshare -a                     every account and every user
  rshare -A vision              account vision, its sub-accounts and your lines in them
  rshare -a -A vision,nlp       two accounts with all their users
  rshare -u alice,bob           these users' lines (operators, or with private_accounting off)
  rshare --what-if vision=10 --what-if nlp=60
                                the factors if vision had 10 shares and nlp 60
  rshare --json | jq '.shares[] | select(.user == null)'
"""

HEADER = ("Account", "User", "RawShares", "NormShares", "RawUsage", "EffectvUsage",
          "FairShare")


def _what_if(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    name = name.strip()
    try:
        shares = int(value)
    except ValueError:
        shares = -1
    if not sep or not name or shares < 0:
        raise argparse.ArgumentTypeError(
            f"invalid what-if {text!r}: expected ACCOUNT=SHARES, such as vision=10")
    return name, shares


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog=PROG, short_help=False, examples=EXAMPLES,
        description="Show fair-share: each account's and user's shares, decayed usage and "
                    "the fair-share factor that enters their jobs' priority (like sshare).\n"
                    "Usage is billed resource-seconds (GPUs weigh most), halved every "
                    "half-life; the factor is 1 with no usage and 0.5 exactly at one's share.")
    parser.add_argument("-a", "--all", dest="all_users", action="store_true",
                        help="every user's line, not only yours")
    parser.add_argument("-A", "--accounts", dest="accounts", action="extend", type=comma_list,
                        metavar="ACCOUNT[,...]",
                        help="these accounts and their sub-accounts only")
    parser.add_argument("-u", "--users", dest="users", action="extend", type=comma_list,
                        metavar="USER[,...]", help="these users' lines")
    parser.add_argument("--what-if", dest="what_if", action="append", type=_what_if,
                        metavar="ACCOUNT=SHARES",
                        help="compute as if ACCOUNT had SHARES raw shares (repeatable); "
                             "nothing is changed")
    add_output_options(parser)
    return parser


def request(args: argparse.Namespace) -> dict:
    fields: dict = {}
    if args.all_users:
        fields["all_users"] = True
    if args.accounts:
        fields["accounts"] = list(dict.fromkeys(args.accounts))
    if args.users:
        fields["users"] = list(dict.fromkeys(args.users))
    if args.what_if:
        fields["what_if"] = dict(args.what_if)
    return fields


def _usage(value: float) -> str:
    return f"{value:.0f}" if value >= 1 or value == 0 else f"{value:.3g}"


def render(reply: dict, args: argparse.Namespace) -> str:
    rows = reply.get("rows") or []
    if args.json:
        from rmsbatch.cli.layout import render_json
        return render_json("shares", rows, what_if=reply.get("what_if") or {},
                           half_life=reply.get("half_life"))
    table = [] if args.noheader else [HEADER]
    for r in rows:
        indent = " " * r["depth"]
        table.append((indent + r["account"] if r["user"] is None else "",
                      indent + r["user"] if r["user"] is not None else "",
                      str(r["raw_shares"]), f"{r['norm_shares']:.6f}",
                      _usage(r["raw_usage"]), f"{r['effective_usage']:.6f}",
                      f"{r['factor']:.6f}"))
    if not table:
        return ""
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    lines = []
    for row in table:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(widths[i + 2]) for i, cell in enumerate(row[2:])]
        lines.append(" ".join(cells).rstrip())
    if reply.get("what_if"):
        lines.append("what-if: " + ", ".join(f"{k}={v}" for k, v in reply["what_if"].items())
                     + " (not applied)")
    return "\n".join(lines)


def body(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    reply = client.call("shares", **request(args))
    return emit(render(reply, args))


def main() -> None:
    exit_with(PROG, body)


if __name__ == "__main__":
    main()
