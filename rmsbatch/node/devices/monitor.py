"""The accelerator monitor: one process per node, started by rmsd, outside job cgroups.

    python -m rmsbatch.node.devices.monitor --conf-dir DIR --node NAME --socket RMSD_SOCK

It finds the node's devices (discovery), then every `gpu_sample_interval` seconds
samples each one (utilization, memory, power, temperature, clocks and throttling, ECC,
the processes on it), judges its health (rmsbatch.node.devices.health) and reports to rmsd
over rmsd's notify socket. NVIDIA XID and ECC events arrive in a thread of their own and
are reported at once. A process of its own, because NVML calls can block on the driver
for seconds, and because rmsd forks job supervisors, which must not inherit a
multi-threaded process holding a vendor library.

Messages to rmsd (one JSON object per line):
    {"op": "monitor_hello", "pid"}
    {"op": "gpu_inventory", "inventory": {devices, problems, notes, backends},
     "sampled": [index, ...]}
    {"op": "gpu_sample", "time", "samples": {index: {...}}, "unhealthy": {index: verdict},
     "problems": [str]}
    {"op": "monitor_idle", "why"}          nothing to watch: the monitor exits
From rmsd: {"op": "health_reset"} (after `rcontrol resume`), {"op": "stop"}.

A device that failed at discovery, or that sampled lost, is looked for again on each
health_reset (a fresh discovery): if it answers now, a new gpu_inventory goes out
before the judgement, so a GPU repaired while drained comes back with its name.

The monitor ends when rmsd closes the connection (rmsd stopped or was killed).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import select
import signal
import socket
import sys
import threading
import time

from rmsbatch.node.devices import discovery
from rmsbatch.node.devices.health import Health
from rmsbatch.node.devices.record import char_device

log = logging.getLogger("rmsbatch.devices.monitor")


class Monitor:
    """Discovery, sampling and health for one node; no sockets (tests drive it)."""

    def __init__(self, gpus, mode: str, *, backends=discovery.DEFAULT_BACKENDS, root: str = "/",
                 thermal_after: float = 300.0, ignore_xids=(13, 31, 43, 45, 68, 109),
                 modules: dict | None = None):
        self.gpus = gpus
        self.mode = mode
        self.backends = tuple(backends)
        self.root = root
        self.modules = modules
        self.health = Health(thermal_after, ignore_xids)
        self.inventory: discovery.Inventory | None = None
        # what is sampled: our index -> (backend, the backend's own record)
        self.targets: dict[int, tuple[object, object]] = {}
        self.events: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.problems: list[str] = []
        self.seq = 0                # the last health reset rmsd asked for
        self.lost: set[int] = set()   # devices whose latest sample said lost
        self.cgroup_parent: str | None = None   # where this node's job cgroups are
        self._opened: list = []     # backends discovery left open, for sampling and events

    # -- discovery ----------------------------------------------------------------
    def discover(self) -> discovery.Inventory:
        if self.mode == "static":
            inv = discovery.static_inventory(self.gpus)
            found = discovery.discover(self.gpus, "auto", self.backends, self.root,
                                       self.modules, keep_open=True)
            self._match_static(inv, found)
            inv.backends.update({k: v for k, v in found.backends.items() if k != "static"})
        else:
            inv = found = discovery.discover(self.gpus, self.mode, self.backends, self.root,
                                             self.modules, keep_open=True)
            for dev in inv.devices:
                backend = self._backend_of(found, dev)
                if backend is not None:
                    self.targets[dev.index] = (backend, dev)
        self._opened = found.opened
        self.inventory = inv
        return inv

    @staticmethod
    def _backend_of(found: discovery.Inventory, dev):
        for backend in found.opened:
            if dev.key in getattr(backend, "handles", {}):
                return backend
        return None

    def _match_static(self, inv: discovery.Inventory, found: discovery.Inventory) -> None:
        """Declared devices that a library also sees, matched by device number, are
        sampled through it (telemetry and health for hand-written configs)."""
        by_rdev = {}
        for dev in found.devices:
            for path in dev.device_files[:1]:
                rdev = char_device(path)
                if rdev:
                    by_rdev[rdev] = dev
        for dev in inv.devices:
            rdev = char_device(dev.device_files[0]) if dev.device_files else None
            other = by_rdev.get(rdev) if rdev else None
            backend = self._backend_of(found, other) if other is not None else None
            if backend is not None:
                self.targets[dev.index] = (backend, other)

    def start_events(self) -> None:
        """One event thread per backend that has events (NVML's XIDs)."""
        for backend in self._opened:
            watched = [dev for b, dev in self.targets.values() if b is backend]
            if not watched or not hasattr(backend, "watch_events"):
                continue
            t = threading.Thread(target=backend.watch_events, name=f"{backend.name}-events",
                                 args=(self.stop, self.events.put, watched), daemon=True)
            t.start()
            self.threads.append(t)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=2)
        for backend in self._opened:
            backend.close()

    # -- sampling -----------------------------------------------------------------
    def tick(self, now: float) -> dict:
        """Sample every target once; the message for rmsd."""
        samples: dict[int, dict] = {}
        by_backend: dict[int, list] = {}
        for index, (backend, dev) in self.targets.items():
            by_backend.setdefault(id(backend), []).append((index, backend, dev))
        for group in by_backend.values():
            backend = group[0][1]
            try:
                got = backend.sample([dev for _, _, dev in group])
            except Exception as exc:  # noqa: BLE001 - a library failure must not end the monitor
                log.warning("%s sampling failed: %s", backend.name, exc)
                continue
            for index, _, dev in group:
                s = got.get(dev.key)
                if s is None:
                    continue
                if "procs" in s:
                    s["procs"] = _attribute(s["procs"], self.cgroup_parent)
                if s.get("lost"):
                    self.lost.add(index)
                else:
                    self.lost.discard(index)
                samples[str(index)] = s
                self.health.sample(str(index), s, now)
        self.health.settle()
        return self.message(now, samples)

    def drain_events(self, now: float) -> bool:
        """Apply queued events; True if a verdict changed (report now)."""
        changed = False
        keys = {dev.key: index for index, (_, dev) in self.targets.items()}
        while True:
            try:
                kind, dev_keys, code = self.events.get_nowait()
            except queue.Empty:
                return changed
            if kind == "error":
                if code not in self.problems:
                    log.warning("%s", code)
                self.problems = [code]
                changed = True
                continue
            for key in dev_keys:
                if key in keys and self.health.event(str(keys[key]), kind, code, now):
                    changed = True

    def message(self, now: float, samples: dict | None = None) -> dict:
        return {"op": "gpu_sample", "time": now, "samples": samples or {},
                "unhealthy": {k: v.to_dict() for k, v in self.health.unhealthy().items()},
                "problems": list(self.problems), "seq": self.seq}

    def reset(self, seq: int = 0) -> bool:
        """Judge afresh (`rcontrol resume`). Devices that failed at discovery or were
        lost are looked for again; True when that changed the inventory."""
        self.health.reset()
        self.problems = []
        self.seq = seq
        inv = self.inventory
        if inv is None or not (self.lost or any(d.fault for d in inv.devices)):
            return False
        return self.rediscover()

    def rediscover(self) -> bool:
        """Discovery again, from closed libraries (NVML's handles of a GPU that was
        lost may not survive its reset); True when the inventory changed."""
        known = self.inventory.devices if self.inventory else []
        before = [d.to_dict() for d in known]
        self.close()
        self.stop = threading.Event()
        self.threads, self.targets, self.lost, self._opened = [], {}, set(), []
        try:
            inv = self.discover()
        except Exception as exc:  # noqa: BLE001 - as at start: reported, not a silent death
            log.exception("GPU discovery failed")
            self.inventory = discovery.Inventory(
                problems=[f"GPU discovery failed: {type(exc).__name__}: {exc}"])
            return True
        self._carry_names(known)
        self.start_events()
        return [d.to_dict() for d in inv.devices] != before

    def _carry_names(self, known: list) -> None:
        """A GPU that no longer answers, and that nothing else names now, is the one
        this monitor saw at its index before: keep its name, model and device files."""
        was = {(d.backend, d.vendor_index): d for d in known
               if not d.is_partition and d.vendor_index is not None and (d.uuid or d.bdf)}
        for backend, dev in self.targets.values():
            old = was.get((dev.backend, dev.vendor_index))
            if not dev.fault or dev.uuid or dev.bdf or old is None:
                continue
            handle = backend.handles.pop(dev.key)
            for name in ("type", "model", "uuid", "bdf", "mem_mb", "device_files",
                         "numa_node", "cpus", "env_id"):
                setattr(dev, name, getattr(old, name))
            backend.handles[dev.key] = handle


def _attribute(procs, parent: str | None = None):
    """Add to each [pid, MiB] the job run its cgroup names (`<parent>/job_<id>.<restart>`)
    and its session id, which rmsd resolves to a job where there are no cgroups."""
    if not procs:
        return procs
    out = []
    for pid, mem in procs:
        out.append([pid, mem, _cgroup_run(pid, parent), _session(pid)])
    return out


def _cgroup_run(pid: int, parent: str | None = None) -> str | None:
    """The run whose cgroup holds pid: only under this node's parent, so a job of
    another cluster on the same host is never taken for one of ours."""
    try:
        with open(f"/proc/{pid}/cgroup") as fh:
            text = fh.read()
    except OSError:
        return None
    for line in text.splitlines():
        path = line.rpartition(":")[2]
        if parent and f"/{parent}/" not in path + "/":
            continue
        for part in path.split("/"):
            if part.startswith("job_") and "." in part:
                return part[4:]
    return None


def _session(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[4])
    except (OSError, IndexError, ValueError):
        return None


# -- the process ------------------------------------------------------------------------
def _send(sock: socket.socket, message: dict) -> None:
    sock.sendall(json.dumps(message, separators=(",", ":")).encode() + b"\n")


def serve(monitor: Monitor, sock: socket.socket, interval: float) -> int:
    _send(sock, {"op": "monitor_hello", "pid": os.getpid()})
    try:
        inv = monitor.discover()
    except Exception as exc:  # noqa: BLE001 - a backend's bug must not hide the node's GPUs
        log.exception("GPU discovery failed")
        inv = discovery.Inventory(problems=[f"GPU discovery failed: {type(exc).__name__}: {exc}"])
        monitor.inventory, monitor.targets = inv, {}
    _send(sock, {"op": "gpu_inventory", "inventory": inv.to_dict(),
                 "sampled": sorted(monitor.targets)})
    for line in inv.problems + inv.notes:
        log.info("%s", line)
    if not monitor.targets:
        why = "no device answers to a vendor library: " + "; ".join(
            f"{k}: {v}" for k, v in inv.backends.items())
        _send(sock, {"op": "monitor_idle", "why": why})
        monitor.close()
        return 0
    wake_r, wake_w = os.pipe()
    monitor.events = _WakingQueue(monitor.events, wake_w)   # before the threads take it
    monitor.start_events()
    buf = b""
    next_tick = time.monotonic()
    try:
        while True:
            now = time.monotonic()
            if now >= next_tick:
                monitor.drain_events(time.time())
                _send(sock, monitor.tick(time.time()))
                next_tick = now + interval
            ready, _, _ = select.select([sock, wake_r], [], [], max(0.0, next_tick - time.monotonic()))
            if wake_r in ready:
                os.read(wake_r, 4096)
                if monitor.drain_events(time.time()):
                    _send(sock, monitor.message(time.time()))
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    return 0          # rmsd went away
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                    if msg.get("op") == "health_reset":
                        if monitor.reset(msg.get("seq") if isinstance(msg.get("seq"), int) else 0):
                            # a device came back (or went): rmsd registers it first
                            _send(sock, {"op": "gpu_inventory",
                                         "inventory": monitor.inventory.to_dict(),
                                         "sampled": sorted(monitor.targets)})
                        next_tick = time.monotonic()     # judge afresh now
                    elif msg.get("op") == "stop":
                        return 0
    finally:
        monitor.close()


class _WakingQueue:
    """The event queue, writing a byte to a pipe on every put so select() wakes."""

    def __init__(self, q: queue.Queue, fd: int):
        self.q, self.fd = q, fd

    def put(self, item) -> None:
        self.q.put(item)
        try:
            os.write(self.fd, b".")
        except OSError:
            pass

    def get_nowait(self):
        return self.q.get_nowait()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="rmsbatch.node.devices.monitor",
                                description="rmsd's accelerator monitor (started by rmsd)")
    p.add_argument("--conf-dir", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--socket", required=True, help="rmsd's notify socket")
    p.add_argument("--log-file", help="append the log here (rmsd's) instead of stderr")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        filename=args.log_file,
                        format=f"%(asctime)s rmsd-monitor[{os.getpid()}] %(levelname)s "
                               "%(name)s: %(message)s")
    _die_with_parent()
    from rmsbatch import config as configmod
    try:
        cfg = configmod.load(args.conf_dir)
        nd = cfg.nodes[args.node]
    except (configmod.ConfigError, KeyError) as exc:
        print(f"rmsd-monitor: error: {exc}", file=sys.stderr)
        return 1
    ndc = cfg.cluster.node_daemon
    monitor = Monitor(nd.gpus, nd.gpu_detect, backends=ndc.gpu_backends, root=ndc.device_root,
                      thermal_after=ndc.gpu_thermal_drain, ignore_xids=ndc.gpu_xid_ignore)
    from rmsbatch.node.isolation import cgroup_parent
    monitor.cgroup_parent = cgroup_parent(cfg.cluster.name, args.node,
                                          os.path.join(cfg.node_state_dir, args.node))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        from rmsbatch.net.client import connect_unix
        connect_unix(sock, args.socket)
    except OSError as exc:
        print(f"rmsd-monitor: error: cannot reach rmsd at {args.socket}: {exc}", file=sys.stderr)
        return 1
    try:
        return serve(monitor, sock, ndc.gpu_sample_interval)
    except (BrokenPipeError, ConnectionResetError):
        return 0


def _die_with_parent() -> None:
    """SIGTERM when rmsd dies, even by SIGKILL (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
