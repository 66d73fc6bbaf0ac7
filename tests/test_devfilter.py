"""rmsbatch.node.devfilter: the program assembler (golden checks and a tiny
interpreter), the fence's rule set, and real denials on this host through a
cgroup-v2 device eBPF program and through the v1 devices controller."""
from __future__ import annotations

import errno
import os
import struct

import pytest

from rmsbatch.node import devfilter
from rmsbatch.node.cgroup import JobCgroup, Limits, cleanup_stale, detect
from rmsbatch.node.devfilter import (BPF_DEVCG_ACC_MKNOD, BPF_DEVCG_ACC_READ,
                                BPF_DEVCG_ACC_WRITE, BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR,
                                DeviceFence, DeviceRule, attached_count, load_and_attach,
                                program_bytes)

RW = BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE


def decode(prog: bytes) -> list[tuple[int, int, int, int, int]]:
    """-> [(code, dst, src, off, imm)]"""
    assert len(prog) % 8 == 0
    out = []
    for i in range(0, len(prog), 8):
        code, regs, off, imm = struct.unpack("<BBhi", prog[i:i + 8])
        out.append((code, regs & 0xF, regs >> 4, off, imm))
    return out


def run(prog: bytes, dev_type: int, access: int, major: int, minor: int) -> int:
    """Interpret the opcodes the assembler emits over a bpf_cgroup_dev_ctx."""
    ctx = struct.pack("<III", (access << 16) | dev_type, major, minor)
    r = [0] * 11
    insns = decode(prog)
    pc = 0
    M32, M64 = 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF
    for _ in range(1000):
        code, dst, src, off, imm = insns[pc]
        pc += 1
        if code == 0x61:
            assert src == 1
            r[dst] = struct.unpack_from("<I", ctx, off)[0]
        elif code == 0x54:
            r[dst] = (r[dst] & imm) & M32
        elif code == 0x74:
            r[dst] = (r[dst] & M32) >> imm
        elif code == 0x57:
            r[dst] = r[dst] & (imm & M64)
        elif code == 0xB7:
            r[dst] = imm & M64
        elif code == 0xBF:
            r[dst] = r[src]
        elif code == 0x55:
            if r[dst] != (imm & M64):
                pc += off
        elif code == 0x15:
            if r[dst] == (imm & M64):
                pc += off
        elif code == 0x95:
            return r[0]
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
    raise AssertionError("no exit")


PROLOGUE = [(0x61, 2, 1, 0, 0), (0x54, 2, 0, 0, 0xFFFF), (0x61, 3, 1, 0, 0),
            (0x74, 3, 0, 0, 16), (0x61, 4, 1, 4, 0), (0x61, 5, 1, 8, 0)]
ALLOW = [(0xB7, 0, 0, 0, 1), (0x95, 0, 0, 0, 0)]
DENY = [(0xB7, 0, 0, 0, 0), (0x95, 0, 0, 0, 0)]


def test_empty_program_allows_everything():
    prog = program_bytes([])
    assert decode(prog) == PROLOGUE + ALLOW
    assert run(prog, BPF_DEVCG_DEV_CHAR, RW, 1, 3) == 1


def test_one_device_golden():
    prog = program_bytes([DeviceRule("c", 4, 11)])
    assert len(prog) == 13 * 8
    assert decode(prog) == PROLOGUE + [
        (0x55, 2, 0, 4, BPF_DEVCG_DEV_CHAR),     # type != c -> skip 4
        (0x55, 4, 0, 3, 4),                      # major != 4 -> skip 3
        (0x55, 5, 0, 2, 11),                     # minor != 11 -> skip 2
    ] + DENY + ALLOW


def test_wildcards_and_access_golden():
    # any type, any number: deny all -> 2-insn block
    assert decode(program_bytes([DeviceRule("a", None, None)])) == PROLOGUE + DENY + ALLOW
    # write-only deny of every char device with major 195
    prog = program_bytes([DeviceRule("c", 195, None, "w")])
    assert decode(prog)[6:13] == [
        (0x55, 2, 0, 6, BPF_DEVCG_DEV_CHAR),
        (0xBF, 1, 3, 0, 0),                      # r1 = r3 (access)
        (0x57, 1, 0, 0, BPF_DEVCG_ACC_WRITE),    # r1 &= W
        (0x15, 1, 0, 3, 0),                      # no W requested -> skip 3
        (0x55, 4, 0, 2, 195),
        (0xB7, 0, 0, 0, 0), (0x95, 0, 0, 0, 0)]
    assert len(prog) == (6 + 7 + 2) * 8


def test_program_semantics():
    rules = [DeviceRule("c", 195, 1), DeviceRule("c", 195, 2), DeviceRule("b", 8, None),
             DeviceRule("c", 226, None, "w")]
    prog = program_bytes(rules)
    C, B = BPF_DEVCG_DEV_CHAR, BPF_DEVCG_DEV_BLOCK
    assert run(prog, C, RW, 195, 1) == 0
    assert run(prog, C, BPF_DEVCG_ACC_MKNOD, 195, 2) == 0
    assert run(prog, C, RW, 195, 0) == 1             # allocated GPU
    assert run(prog, C, RW, 195, 255) == 1           # nvidiactl
    assert run(prog, B, RW, 195, 1) == 1             # same numbers, other type
    assert run(prog, B, BPF_DEVCG_ACC_READ, 8, 17) == 0
    assert run(prog, C, BPF_DEVCG_ACC_READ, 8, 17) == 1
    assert run(prog, C, BPF_DEVCG_ACC_READ, 226, 128) == 1   # read allowed
    assert run(prog, C, RW, 226, 128) == 0                   # write denied
    assert run(prog, C, RW, 1, 3) == 1                       # /dev/null


def test_rule_validation_and_v1_lines():
    assert DeviceRule("c", 4, 11).v1_lines() == ["c 4:11 rwm"]
    assert DeviceRule("a", None, None).v1_lines() == ["a"]
    assert DeviceRule("a", 195, None, "wr").v1_lines() == ["c 195:* rw", "b 195:* rw"]
    assert DeviceRule("b", None, 3, "m").v1_lines() == ["b *:3 m"]
    for bad in (("x", 1, 1, "rwm"), ("c", 1, 1, ""), ("c", 1, 1, "rx"), ("c", -1, 1, "r")):
        with pytest.raises(ValueError):
            DeviceRule(*bad)
    r = DeviceRule.from_path("/dev/null")
    assert (r.type, r.major, r.minor) == ("c", 1, 3)
    with pytest.raises(ValueError):
        DeviceRule.from_path("/")


def test_fence_rules(tmp_path):
    node = [f"/dev/tty{i}" for i in range(10, 18)]
    if not all(os.path.exists(p) for p in node):
        node = ["/dev/null", "/dev/zero", "/dev/full"]
    alias = tmp_path / "gpu2"
    alias.symlink_to(node[2])                   # allocated through another name
    fence = DeviceFence(node + [str(tmp_path / "missing")], [node[0], str(alias)])
    want = [DeviceRule.from_path(p) for i, p in enumerate(node) if i not in (0, 2)]
    assert fence.rules == want
    assert fence.unresolved == [str(tmp_path / "missing")]
    assert fence.v1_lines() == [r.v1_lines()[0] for r in want]
    assert fence.program() == program_bytes(want)
    assert DeviceFence(node, node).rules == []


# --------------------------------------------------------------------------
# real denials

HOST = detect() if os.path.isdir("/sys/fs/cgroup") else None
TTYS = [f"/dev/tty{i}" for i in range(10, 18)]
HAVE_TTYS = all(os.path.exists(p) for p in TTYS)
ROOT = os.geteuid() == 0
PARENT = f"rmsbatch_devtest_{os.getpid()}"
needs_ebpf = pytest.mark.skipif(not (ROOT and HOST and HOST.v2 and HAVE_TTYS),
                                reason="needs root, a cgroup2 hierarchy and /dev/tty10..17")
needs_v1 = pytest.mark.skipif(not (ROOT and HOST and "devices" in HOST.v1 and HAVE_TTYS),
                              reason="needs root, the v1 devices controller, /dev/tty10..17")


def open_in(cgroup_procs: list[str], paths: list[str]) -> dict[str, str]:
    """Fork a child, move it into the cgroup(s), try to open each path."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            for procs in cgroup_procs:
                fd = os.open(procs, os.O_WRONLY)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
            res = []
            for p in paths:
                try:
                    os.close(os.open(p, os.O_RDWR | os.O_NOCTTY))
                    res.append("ok")
                except OSError as e:
                    res.append(errno.errorcode.get(e.errno, str(e.errno)))
            os.write(w, " ".join(res).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        out = fh.read().split()
    os.waitpid(pid, 0)
    assert len(out) == len(paths), "child failed to join the cgroup"
    return dict(zip(paths, out))


@pytest.fixture
def cgdirs():
    """Plain cgroup directories made by the test; removed after."""
    made: list[str] = []

    def make(root: str, *names: str) -> str:
        path = root
        for n in (PARENT,) + names:
            path = os.path.join(path, n)
            if not os.path.isdir(path):
                os.mkdir(path)
                made.append(path)
        return path

    yield make
    for d in reversed(made):
        os.rmdir(d)


@needs_ebpf
def test_ebpf_denies_tty11_raw(cgdirs):
    d = cgdirs(HOST.v2, "job_1")
    fd = load_and_attach(d, [DeviceRule.from_path("/dev/tty11")])
    os.close(fd)                                   # the attachment keeps it alive
    assert attached_count(d) == 1
    res = open_in([os.path.join(d, "cgroup.procs")], ["/dev/tty11", "/dev/tty10", "/dev/null"])
    assert res == {"/dev/tty11": "EPERM", "/dev/tty10": "ok", "/dev/null": "ok"}
    # outside the cgroup nothing changed
    os.close(os.open("/dev/tty11", os.O_RDWR | os.O_NOCTTY))


@needs_ebpf
def test_ebpf_allow_multi_nesting_only_narrows(cgdirs):
    job = cgdirs(HOST.v2, "job_2")
    step = cgdirs(HOST.v2, "job_2", "step_0")
    os.close(load_and_attach(job, [DeviceRule.from_path("/dev/tty11")]))
    os.close(load_and_attach(step, [DeviceRule.from_path("/dev/tty12")]))
    res = open_in([os.path.join(step, "cgroup.procs")], ["/dev/tty11", "/dev/tty12",
                                                         "/dev/tty13"])
    assert res == {"/dev/tty11": "EPERM", "/dev/tty12": "EPERM", "/dev/tty13": "ok"}


@needs_v1
def test_v1_devices_deny_tty11(cgdirs):
    d = cgdirs(HOST.v1["devices"], "job_3")
    devfilter.write_v1(d, [DeviceRule.from_path("/dev/tty11")])
    res = open_in([os.path.join(d, "cgroup.procs")], ["/dev/tty11", "/dev/tty10", "/dev/null"])
    assert res == {"/dev/tty11": "EPERM", "/dev/tty10": "ok", "/dev/null": "ok"}


@pytest.mark.skipif(not (ROOT and HOST and HAVE_TTYS and HOST.mechanisms.get("devices")),
                    reason="needs root, a device mechanism and /dev/tty10..17")
@pytest.mark.parametrize("mechanism", ["ebpf", "v1"])
def test_fence_on_job_cgroup(mechanism):
    if mechanism == "ebpf" and not HOST.v2 or mechanism == "v1" and "devices" not in HOST.v1:
        pytest.skip(f"no {mechanism} device mechanism here")
    cg = JobCgroup(9, HOST, parent=PARENT).create(Limits(pids_max=20))
    try:
        fence = DeviceFence(TTYS, ["/dev/tty10", "/dev/tty13"])
        assert fence.apply(cg, mechanism) == mechanism
        assert "devices" in cg.protections() and cg.mechanisms()["devices"] == mechanism
        procs = [os.path.join(d, "cgroup.procs") for d in cg.dirs.values()]
        res = open_in(procs, TTYS + ["/dev/null", "/dev/zero"])
        assert [p for p, v in res.items() if v != "ok"] == \
            ["/dev/tty11", "/dev/tty12", "/dev/tty14", "/dev/tty15", "/dev/tty16", "/dev/tty17"]
        assert all(v in ("ok", "EPERM") for v in res.values())
    finally:
        cg.remove()
        cleanup_stale(PARENT, HOST, remove_parent=True)
    assert not [d for d in cg.dirs.values() if os.path.exists(d)]


def test_fence_records_missing_mechanism(tmp_path):
    lay = detect(str(tmp_path), v1={}, v2=None)
    cg = JobCgroup(1, lay, parent="x")
    assert cg.dirs == {}
    assert DeviceFence(["/dev/null"], []).apply(cg) is None
    assert "devices" in cg.missing() and "devices" not in cg.protections()
