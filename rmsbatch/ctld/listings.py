"""Job listings served again: `rq` in a loop, or many users running `watch rq`, ask for
the same thousands of rows while nothing has changed. Reading them from the spool and
encoding them is most of such a reply (about 0.1 s at 10,000 jobs on a small host);
the encoded reply of a listing is kept, and sent again while the spool's version
(rmsbatch.ctld.spool.Spool.version) is the same. Any write, by anyone, ends it.

Only the bytes are kept (about 80 bytes a row, not the rows), for the few listings
asked most recently.
"""
from __future__ import annotations

import json
from collections import OrderedDict

KEPT = 4


class Encoded(dict):
    """A reply already encoded (the line the loop sends as is); as a dict it holds only
    "ok", for the dispatcher."""

    def __init__(self, reply: dict):
        super().__init__(ok=reply.get("ok", True))
        self.data = json.dumps({"ok": True, **reply}, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def spliced(cls, encoded: "Encoded", extra: dict) -> "Encoded":
        """The same reply with `extra`'s keys added, without encoding the rest again
        (a listing of 10,000 jobs is most of a megabyte)."""
        out = cls.__new__(cls)
        dict.__init__(out, encoded)
        more = json.dumps(extra, separators=(",", ":")).encode()
        out.data = encoded.data.rstrip()[:-1] + b"," + more[1:] + b"\n"
        return out


class Listings:
    def __init__(self, spool):
        self.spool = spool
        self.kept: OrderedDict = OrderedDict()
        self.hits = self.misses = 0

    def reply(self, query: dict, columns: list[str]) -> Encoded:
        """`{"columns": COLUMNS, "rows": ...}` for the spool's jobs matching QUERY."""
        key = (json.dumps(query, sort_keys=True), tuple(columns))
        version = self.spool.version()
        entry = self.kept.get(key)
        if entry is not None and entry[0] == version:
            self.kept.move_to_end(key)
            self.hits += 1
            return entry[1]
        self.misses += 1
        encoded = Encoded({"columns": list(columns),
                           "rows": self.spool.jobs(**query, columns=list(columns))})
        self.kept[key] = (version, encoded)
        self.kept.move_to_end(key)
        while len(self.kept) > KEPT:
            self.kept.popitem(last=False)
        return encoded
