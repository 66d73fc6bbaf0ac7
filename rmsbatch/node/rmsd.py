"""rmsd: the node daemon. A thin shell around rmsbatch.node.daemon."""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

log = logging.getLogger("rmsbatch.rmsd")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rmsd", description="The rmsbatch node daemon: registers this node with "
        "rmsctld and starts, signals and stops its jobs.",
        epilog="Examples:\n  rmsd                # node named after this host\n"
               "  rmsd -N gpu001 -v   # act as node gpu001",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conf-dir", help="configuration directory (default: $RMS_CONF_DIR, "
                   "else /etc/rmsbatch)")
    p.add_argument("-N", "--node", help="this node's name in cluster.toml (default: the short "
                   "host name)")
    p.add_argument("-L", "--log-file", help="log here instead of the configured log_file/stderr")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--stop-jobs", action="store_true",
                   help="cancel every job running on this node (SIGTERM to its supervisor), then exit")
    p.add_argument("-V", "--version", action="version", version="rmsd (rmsbatch) 0.1.0")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from rmsbatch import config as configmod
    from rmsbatch.net import client
    from rmsbatch.core import daemon
    try:
        cfg = configmod.load(args.conf_dir or client.conf_dir())
    except (configmod.ConfigError, ValueError) as exc:
        print(f"rmsd: error: {exc}", file=sys.stderr)
        return 1
    node = args.node or socket.gethostname().split(".")[0]
    nd_cfg = cfg.cluster.node_daemon
    log_file = args.log_file or (cfg.path(nd_cfg.log_file) if nd_cfg.log_file else None)
    if log_file:
        log_file = log_file.replace("%n", node)
    try:
        daemon.setup_logging(log_file, args.verbose)
    except daemon.UnsafePath as exc:
        print(f"rmsd: error: {exc}", file=sys.stderr)
        return 1
    from rmsbatch.node.daemon import NodeDaemon
    if args.stop_jobs:
        n = NodeDaemon.__new__(NodeDaemon)
        n.jobs_dir = os.path.join(cfg.node_state_dir, node, "jobs")
        if os.path.isdir(n.jobs_dir):
            print(f"rmsd: cancelled {n.stop_jobs()} running job(s) on {node}")
        return 0
    pid_file = cfg.path(nd_cfg.pid_file).replace("%n", node) if nd_cfg.pid_file else None
    try:
        lock = daemon.take_lock(os.path.join(cfg.node_state_dir, node, "rmsd.lock"),
                                f"rmsd is already running for node {node}")
        daemon.write_pid_file(pid_file)
    except (daemon.AlreadyRunning, daemon.UnsafePath) as exc:
        print(f"rmsd: error: {exc}", file=sys.stderr)
        return 1
    notice = daemon.unprivileged_notice("rmsd")
    if notice:
        log.warning("%s", notice)
    from rmsbatch.net.loop import Limits, Loop
    try:
        # Only root and rmsd's own uid reach the notify socket (mode 0600): the limits
        # that matter there are the size of a message and the time to send it.
        nodedaemon = NodeDaemon(cfg, node, Loop(Limits(server="rmsd", where=None)))
    except (ValueError, daemon.UnsafePath) as exc:
        print(f"rmsd: error: {exc}", file=sys.stderr)
        log.error("%s", exc)
        return 1
    from rmsbatch.node.spawner import Spawner
    nodedaemon.spawner = Spawner()
    nodedaemon.spawner.available()      # started now: the first job does not wait for it
    signals = daemon.Signals()
    nodedaemon.loop.add_waker(signals.wake_r)
    log.info("node %s: rmsd %d started (state %s)", node, os.getpid(), nodedaemon.state_dir)
    try:
        while not signals.stop:
            nodedaemon.run_once()
            if signals.reload:
                signals.reload = False
                reload(nodedaemon, cfg.directory)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        nodedaemon.spawner.stop()
        nodedaemon.stop_monitor()
        from rmsbatch.node import prolog
        prolog.release(nodedaemon)
    log.info("node %s: rmsd %d stopped (jobs keep running under their supervisors)",
             node, os.getpid())
    os.close(lock)
    return 0


def reload(nodedaemon, directory: str) -> None:
    """SIGHUP: the new configuration, or the old one and a line in the log saying why;
    never the end of rmsd (its jobs would lose their node daemon)."""
    from rmsbatch import config as configmod
    try:
        nodedaemon.reload(configmod.load(directory))
    except (configmod.ConfigError, ValueError) as exc:
        log.error("node %s: configuration not reloaded (keeping the old one): %s",
                  nodedaemon.node, exc)
    except Exception:   # noqa: BLE001
        log.exception("node %s: configuration not reloaded (keeping the old one)",
                      nodedaemon.node)


if __name__ == "__main__":
    sys.exit(main())
