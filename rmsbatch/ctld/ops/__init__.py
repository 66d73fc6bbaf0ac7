"""The controller's operations, dispatched from one table.

Each op names its handler, the role a caller needs and the request model its
message must validate against, so an op is closed until it says who may call it:

    @op("drain", model=requests.Drain, role=OPERATOR, audit=True)
    def drain(ctl, conn, req): ...

Roles: USER (anyone the controller host knows by uid), OPERATOR (operators and admins
named in tenants.toml, and the daemons' own uid), NODE (a node daemon or a job
supervisor: the daemons' uid; which node it speaks for is checked per message).
The caller's identity comes from the transport and is bound to the connection
(`Conn.uid`, `Conn.meta["node"]` once a node daemon has registered on it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

USER = "user"
OPERATOR = "operator"
NODE = "node"


@dataclass(frozen=True)
class Op:
    name: str
    handler: Callable
    role: str
    model: type
    audit: bool = False     # each request leaves a row in the audit trail (ctld.audit)


OPS: dict[str, Op] = {}


def op(name: str, *, model: type, role: str = USER, audit: bool = False):
    def register(handler: Callable) -> Callable:
        if name in OPS:
            raise ValueError(f"op {name!r} registered twice")
        OPS[name] = Op(name, handler, role, model, audit)
        return handler
    return register


# Importing the modules registers their ops.
from rmsbatch.ctld.ops import admin, jobs, nodes, steps  # noqa: E402,F401
from rmsbatch.ctld.ops import control  # noqa: E402,F401
from rmsbatch.ctld.ops import shares  # noqa: E402,F401
from rmsbatch.ctld.ops import reservations  # noqa: E402,F401
from rmsbatch.ctld.ops import acct  # noqa: E402,F401
