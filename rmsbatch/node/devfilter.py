"""Deny a job the accelerator devices it was not allocated.

Slurm's model (ConstrainDevices): of the accelerator device files on the node,
the unallocated ones are denied (open() fails with EPERM); everything else --
/dev/null, ttys, ptys, /dev/nvidiactl, /dev/kfd -- stays reachable through a
default *allow*.  Major and minor numbers come from os.stat(path).st_rdev.

Two mechanisms:

* cgroup v1 devices controller: `c MAJ:MIN rwm` lines written to the job's
  `devices.deny`.
* cgroup v2: a BPF_PROG_TYPE_CGROUP_DEVICE program assembled here in pure
  Python, loaded with bpf(2) through ctypes and attached to the job's cgroup2
  directory with BPF_F_ALLOW_MULTI (a program attached lower down can only
  narrow the set further; the job cannot undo it).  On a hybrid host this is
  the job's cgroup in the `unified` mount.  The attachment keeps the program
  alive; it goes away with the cgroup.

    fence = DeviceFence(["/dev/nvidia0", ..., "/dev/nvidia7"], allocated=["/dev/nvidia3"])
    fence.apply(job_cgroup)          # -> "v1" | "ebpf"; recorded on the JobCgroup

Program layout (same shape as Slurm's, runc's and systemd's):

    r2 = ctx->access_type & 0xffff      # BPF_DEVCG_DEV_CHAR=2 / BLOCK=1
    r3 = ctx->access_type >> 16         # BPF_DEVCG_ACC_MKNOD=1 | READ=2 | WRITE=4
    r4 = ctx->major
    r5 = ctx->minor
    per rule:  if r2 != type  goto next      (left out for type 'a')
               r1 = r3; r1 &= acc; if r1 == 0 goto next   (left out for 'rwm')
               if r4 != major goto next      (left out for any major)
               if r5 != minor goto next      (left out for any minor)
               r0 = 0; exit                  # deny
    r0 = 1; exit                             # default: allow

Loading needs CAP_SYS_ADMIN (or CAP_BPF + CAP_NET_ADMIN); kernels before 5.11
charge the program to RLIMIT_MEMLOCK, which is raised on EPERM and retried.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import resource
import stat
import struct
from dataclasses import dataclass
from typing import Iterable

# bpf(2) commands, types and flags (linux/bpf.h)
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_OVERRIDE = 1
BPF_F_ALLOW_MULTI = 2

BPF_DEVCG_DEV_BLOCK = 1
BPF_DEVCG_DEV_CHAR = 2
BPF_DEVCG_ACC_MKNOD = 1
BPF_DEVCG_ACC_READ = 2
BPF_DEVCG_ACC_WRITE = 4

# opcodes
LDX_MEM_W = 0x61        # dst = *(u32 *)(src + off)
ALU32_AND_K = 0x54
ALU32_RSH_K = 0x74
ALU64_AND_K = 0x57
ALU64_MOV_K = 0xB7
ALU64_MOV_X = 0xBF
JMP_JNE_K = 0x55
JMP_JEQ_K = 0x15
JMP_EXIT = 0x95

ATTR_SIZE = 144
PROG_NAME = b"rmsbatch_devs"
_BPF_NR = {"x86_64": 321, "amd64": 321, "aarch64": 280, "arm64": 280, "riscv64": 280,
           "ppc64le": 361, "ppc64": 361, "s390x": 351, "i686": 357, "i386": 357,
           "armv7l": 386, "armv6l": 386}

_TYPES = {"c": BPF_DEVCG_DEV_CHAR, "b": BPF_DEVCG_DEV_BLOCK}
_ACC = {"r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE, "m": BPF_DEVCG_ACC_MKNOD}
_ALL_ACC = BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE | BPF_DEVCG_ACC_MKNOD


class DeviceFilterError(OSError):
    """Loading, attaching or writing a device rule failed."""


@dataclass(frozen=True)
class DeviceRule:
    """A device to *deny*: type 'c' | 'b' | 'a' (any), major/minor None = any."""
    type: str
    major: int | None
    minor: int | None
    access: str = "rwm"

    def __post_init__(self):
        if self.type not in ("c", "b", "a"):
            raise ValueError(f"device type must be 'c', 'b' or 'a', not {self.type!r}")
        if not self.access or set(self.access) - set("rwm"):
            raise ValueError(f"device access must be made of 'rwm', not {self.access!r}")
        for v in (self.major, self.minor):
            if v is not None and not (0 <= int(v) < 2 ** 31):
                raise ValueError(f"bad device number {v!r}")

    @classmethod
    def from_path(cls, path: str, access: str = "rwm") -> "DeviceRule":
        st = os.stat(path)
        if stat.S_ISCHR(st.st_mode):
            t = "c"
        elif stat.S_ISBLK(st.st_mode):
            t = "b"
        else:
            raise ValueError(f"{path} is not a device file")
        return cls(t, os.major(st.st_rdev), os.minor(st.st_rdev), access)

    @property
    def access_mask(self) -> int:
        m = 0
        for ch in self.access:
            m |= _ACC[ch]
        return m

    def v1_lines(self) -> list[str]:
        """The cgroup-v1 `devices.deny` line(s): 'c 195:1 rwm', 'a' for all."""
        acc = "".join(ch for ch in "rwm" if ch in self.access)
        if self.type == "a" and self.major is None and self.minor is None and acc == "rwm":
            return ["a"]
        num = f"{'*' if self.major is None else self.major}:" \
              f"{'*' if self.minor is None else self.minor}"
        types = ("c", "b") if self.type == "a" else (self.type,)
        return [f"{t} {num} {acc}" for t in types]


# --------------------------------------------------------------------------
# assembler

def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """struct bpf_insn { u8 code; u8 dst:4, src:4; s16 off; s32 imm; }"""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _rule_block(rule: DeviceRule) -> list[bytes]:
    # (kind, args): jumps get their offset once the block length is known
    parts: list[tuple] = []
    if rule.type != "a":
        parts.append(("jne", 2, _TYPES[rule.type]))
    mask = rule.access_mask
    if mask != _ALL_ACC:
        parts.append(("raw", insn(ALU64_MOV_X, dst=1, src=3)))
        parts.append(("raw", insn(ALU64_AND_K, dst=1, imm=mask)))
        parts.append(("jeq", 1, 0))
    if rule.major is not None:
        parts.append(("jne", 4, int(rule.major)))
    if rule.minor is not None:
        parts.append(("jne", 5, int(rule.minor)))
    parts.append(("raw", insn(ALU64_MOV_K, dst=0, imm=0)))
    parts.append(("raw", insn(JMP_EXIT)))
    n = len(parts)
    out = []
    for i, p in enumerate(parts):
        if p[0] == "raw":
            out.append(p[1])
        else:
            code = JMP_JNE_K if p[0] == "jne" else JMP_JEQ_K
            out.append(insn(code, dst=p[1], off=n - i - 1, imm=p[2]))
    return out


PROLOGUE = (
    insn(LDX_MEM_W, dst=2, src=1, off=0),       # r2 = access_type
    insn(ALU32_AND_K, dst=2, imm=0xFFFF),        # r2 &= 0xffff  -> device type
    insn(LDX_MEM_W, dst=3, src=1, off=0),       # r3 = access_type
    insn(ALU32_RSH_K, dst=3, imm=16),            # r3 >>= 16     -> access bits
    insn(LDX_MEM_W, dst=4, src=1, off=4),       # r4 = major
    insn(LDX_MEM_W, dst=5, src=1, off=8),       # r5 = minor
)
EPILOGUE = (insn(ALU64_MOV_K, dst=0, imm=1), insn(JMP_EXIT))


def program_bytes(rules: Iterable[DeviceRule]) -> bytes:
    """The device program denying `rules` (return 0) and allowing all else (1)."""
    out = list(PROLOGUE)
    for rule in rules:
        out.extend(_rule_block(rule))
    out.extend(EPILOGUE)
    return b"".join(out)


# --------------------------------------------------------------------------
# bpf(2)

_libc = None


def _syscall_nr() -> int:
    m = platform.machine().lower()
    if m not in _BPF_NR:
        raise DeviceFilterError(errno.ENOSYS, f"bpf(2) syscall number unknown for {m}")
    return _BPF_NR[m]


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    ctypes.set_errno(0)
    r = _libc.syscall(ctypes.c_long(_syscall_nr()), ctypes.c_long(cmd),
                      ctypes.c_void_p(ctypes.addressof(attr)), ctypes.c_ulong(len(attr)))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int(r)


def load_program(prog: bytes, *, name: bytes = PROG_NAME) -> int:
    """BPF_PROG_LOAD a cgroup device program; returns its fd."""
    if len(prog) % 8:
        raise ValueError("program length is not a multiple of 8")
    insns = ctypes.create_string_buffer(prog, len(prog))
    lic = ctypes.create_string_buffer(b"GPL")

    def attempt(log: ctypes.Array | None) -> int:
        attr = ctypes.create_string_buffer(ATTR_SIZE)
        struct.pack_into("<II", attr, 0, BPF_PROG_TYPE_CGROUP_DEVICE, len(prog) // 8)
        struct.pack_into("<QQ", attr, 8, ctypes.addressof(insns), ctypes.addressof(lic))
        if log is not None:
            struct.pack_into("<IIQ", attr, 24, 1, len(log), ctypes.addressof(log))
        attr[48:48 + len(name[:15])] = name[:15]
        return _bpf(BPF_PROG_LOAD, attr)

    try:
        return attempt(None)
    except OSError as e:
        if e.errno == errno.EPERM:
            # kernels < 5.11 charge BPF memory to RLIMIT_MEMLOCK
            try:
                resource.setrlimit(resource.RLIMIT_MEMLOCK,
                                   (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
                return attempt(None)
            except (OSError, ValueError):
                pass
            raise DeviceFilterError(e.errno, "BPF_PROG_LOAD of the device program: "
                                    f"{e.strerror} (needs CAP_SYS_ADMIN or CAP_BPF+"
                                    "CAP_NET_ADMIN; check RLIMIT_MEMLOCK)") from e
        log = ctypes.create_string_buffer(65536)
        try:
            return attempt(log)
        except OSError as e2:
            msg = log.value.decode(errors="replace").strip()
            raise DeviceFilterError(e2.errno, f"BPF_PROG_LOAD of the device program: "
                                    f"{e2.strerror}; verifier: {msg[-2000:]}") from e2


def attach(cgroup_dir: str, prog_fd: int, flags: int = BPF_F_ALLOW_MULTI) -> None:
    """BPF_PROG_ATTACH prog_fd to cgroup_dir as BPF_CGROUP_DEVICE."""
    cg = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        attr = ctypes.create_string_buffer(ATTR_SIZE)
        struct.pack_into("<IIII", attr, 0, cg, prog_fd, BPF_CGROUP_DEVICE, flags)
        try:
            _bpf(BPF_PROG_ATTACH, attr)
        except OSError as e:
            hint = " (an ancestor attached a program without ALLOW_MULTI/OVERRIDE?)" \
                if e.errno == errno.EPERM else ""
            raise DeviceFilterError(e.errno, f"BPF_PROG_ATTACH to {cgroup_dir}: "
                                    f"{e.strerror}{hint}") from e
    finally:
        os.close(cg)


def attached_count(cgroup_dir: str) -> int:
    """How many device programs are attached directly to cgroup_dir (BPF_PROG_QUERY)."""
    cg = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        ids = (ctypes.c_uint32 * 64)()
        attr = ctypes.create_string_buffer(ATTR_SIZE)
        struct.pack_into("<IIII", attr, 0, cg, BPF_CGROUP_DEVICE, 0, 0)
        struct.pack_into("<QI", attr, 16, ctypes.addressof(ids), 64)
        _bpf(BPF_PROG_QUERY, attr)
        return struct.unpack_from("<I", attr, 24)[0]
    finally:
        os.close(cg)


def load_and_attach(cgroup_dir: str, rules: Iterable[DeviceRule],
                    flags: int = BPF_F_ALLOW_MULTI) -> int:
    """Load the deny program for `rules` and attach it to `cgroup_dir` (a
    cgroup2 directory).  Returns the program fd; the caller may close it right
    away (the attachment keeps the program alive until the cgroup goes)."""
    fd = load_program(program_bytes(rules))
    try:
        attach(cgroup_dir, fd, flags)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_v1(devices_dir: str, rules: Iterable[DeviceRule]) -> None:
    """Append the rules to a v1 devices cgroup's devices.deny: one write(2) each (the
    kernel parses each write as one rule), through one descriptor."""
    path = os.path.join(devices_dir, "devices.deny")
    lines = [line for rule in rules for line in rule.v1_lines()]
    if not lines:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise DeviceFilterError(e.errno, f"cannot open {path}: {e.strerror}") from e
    try:
        for line in lines:
            try:
                os.write(fd, line.encode())
            except OSError as e:
                raise DeviceFilterError(e.errno, f"writing {line!r} to {path}: "
                                        f"{e.strerror}") from e
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# the fence

def _dev_key(path: str) -> tuple[str, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISCHR(st.st_mode):
        return ("c", st.st_rdev)
    if stat.S_ISBLK(st.st_mode):
        return ("b", st.st_rdev)
    return None


class DeviceFence:
    """Deny the node's accelerator devices that are not allocated to the job.

    node_devices: every accelerator device file on the node (gres list).
    allocated: the subset the job may use (compared by device number, so
      symlinks and aliases match).
    Devices that cannot be stat'ed are listed in `unresolved` and not denied
    (they cannot be opened either while they do not exist).
    """

    def __init__(self, node_devices: Iterable[str], allocated: Iterable[str] = ()):
        self.node_devices = list(node_devices)
        self.allocated = list(allocated)
        self.unresolved: list[str] = []
        allowed = {k for k in (_dev_key(p) for p in self.allocated) if k}
        rules: list[DeviceRule] = []
        seen = set()
        for path in self.node_devices:
            key = _dev_key(path)
            if key is None:
                self.unresolved.append(path)
                continue
            if key in allowed or key in seen:
                continue
            seen.add(key)
            rules.append(DeviceRule(key[0], os.major(key[1]), os.minor(key[1])))
        self.rules = rules

    def v1_lines(self) -> list[str]:
        return [line for r in self.rules for line in r.v1_lines()]

    def program(self) -> bytes:
        return program_bytes(self.rules)

    def apply_v1(self, devices_dir: str) -> None:
        write_v1(devices_dir, self.rules)

    def apply_ebpf(self, cgroup2_dir: str) -> None:
        if not self.rules:
            return
        fd = load_and_attach(cgroup2_dir, self.rules)
        os.close(fd)

    def apply(self, job, mechanism: str | None = None) -> str | None:
        """Apply to a rmsbatch.node.cgroup.JobCgroup (after create, before the job
        process starts) and record the outcome on it ("devices" in its
        protections, or in missing()).  mechanism: "v1", "ebpf" or None (the
        host's preference, then the other).  Returns the mechanism used."""
        preferred = mechanism or job.layout.mechanisms.get("devices")
        order = [m for m in (preferred, "v1", "ebpf") if m]
        if mechanism:
            order = [mechanism]
        errors = []
        for m in dict.fromkeys(order):
            d = job.dirs.get("devices" if m == "v1" else "v2")
            if not d or not os.path.isdir(d):
                errors.append(f"{m}: job has no {'v1 devices' if m == 'v1' else 'cgroup2'} "
                              "cgroup")
                continue
            try:
                if m == "v1":
                    self.apply_v1(d)
                else:
                    self.apply_ebpf(d)
            except (OSError, ValueError) as e:
                errors.append(f"{m}: {e}")
                continue
            job.mark_applied("devices", m)
            return m
        job.mark_missing("devices", "; ".join(errors) or "no device mechanism")
        return None
