"""Finding the controller: the cheap cluster.toml scan agrees with a real TOML parser."""
from __future__ import annotations

import os
import tomllib

import pytest

from rmsbatch.net import client

CASES = [
    '[controller]\nsocket = "run/rmsctld.sock"\n',
    '# socket is set below\n[controller] # the controller\nspool_dir = "s"\nsocket = \'/run/x.sock\'  # here\n',
    'name = "c"\n[[nodes]]\nnames = "a"\n',
    '[node_daemon]\nsocket = "not/this"\n[controller]\nsocket = "this"\n',
    'controller = { socket = "inline.sock" }\n',
    '[controller]\nsocket = "with \\\\ escape"\n',
    '[controller]\nsocket = "a" ; junk\n',
]


@pytest.mark.parametrize("text", CASES)
def test_scan_matches_toml(tmp_path, text):
    (tmp_path / "cluster.toml").write_text(text)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        with pytest.raises(client.ControllerUnavailable, match="not valid TOML"):
            client.socket_path(str(tmp_path))
        return
    expected = (doc.get("controller") or {}).get("socket") or client.DEFAULT_SOCKET
    assert client.socket_path(str(tmp_path)) == os.path.join(str(tmp_path), expected)


def test_conf_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RMS_CONF_DIR", str(tmp_path))
    assert client.conf_dir() == str(tmp_path)
    monkeypatch.delenv("RMS_CONF_DIR")
    if os.geteuid() == 0:
        assert client.conf_dir() == "/etc/rmsbatch"


# -- the wire format: the C modules underneath json, byte for byte --------------------
MESSAGES = [
    {"op": "submit", "spec": {"script": "#!/bin/sh\necho 'héllo' \"there\"\t\\ \x01\u2028",
                              "argv": [], "nodes": 1, "mem_mb": None, "hold": True,
                              "nice": -5, "ratio": 0.1, "big": 2 ** 70, "tiny": 1e-300,
                              "environment": {"PATH": "/bin", "ÜNICODE": "😀"}}},
    {"op": "jobs", "ids": [1, 2, 3], "fields": ["id", "state"], "active": False},
    {"ok": True, "rows": [[1, "PENDING", None, 1.5], [2, "RUNNING", 3.25e12, -0.0]]},
    {"op": "x", "nested": {"a": [[], {}, [{"b": [None, True, False]}]]}, "e": ""},
    {1: "int key", 2.5: "float key", True: "bool key", None: "none key"},
]


@pytest.mark.parametrize("message", MESSAGES)
def test_wire_format_is_json(message):
    import json

    from rmsbatch.net.client import decode, encode
    line = encode(message)
    assert line == json.dumps(message, separators=(",", ":")).encode() + b"\n"
    assert decode(line) == json.loads(line)
    assert decode(b'  {"a": [1, 2.0, "x"], "b": NaN}\r\n')["a"] == [1, 2.0, "x"]


def test_wire_format_refuses_what_json_refuses():
    from rmsbatch.net.client import decode, encode
    with pytest.raises(TypeError):
        encode({"op": object()})
    with pytest.raises(ValueError):
        encode({"x": float("nan")})
    for bad in (b'{"a": 1', b'{"a": 1} x', b"", b"\xff"):
        with pytest.raises(ValueError):
            decode(bad)
