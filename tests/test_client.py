"""Finding the controller: the cheap cluster.toml scan agrees with a real TOML parser."""
from __future__ import annotations

import os
import tomllib

import pytest

from rmsbatch import client

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
