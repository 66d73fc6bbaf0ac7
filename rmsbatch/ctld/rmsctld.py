"""rmsctld: the controller daemon. A thin shell around rmsbatch.ctld.service."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

log = logging.getLogger("rmsbatch.rmsctld")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rmsctld", description="The rmsbatch controller: queue, scheduler and API.",
        epilog="Examples:\n  rmsctld --check-config\n  RMS_CONF_DIR=/tmp/c rmsctld -v",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conf-dir", help="configuration directory (default: $RMS_CONF_DIR, "
                   "else /etc/rmsbatch)")
    p.add_argument("--check-config", action="store_true",
                   help="validate the configuration, print a summary and exit")
    p.add_argument("-L", "--log-file", help="log here instead of the configured log_file/stderr")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-V", "--version", action="version", version="rmsctld (rmsbatch) 0.1.0")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from rmsbatch import config as configmod
    from rmsbatch.net import client
    from rmsbatch.core import daemon
    conf_dir = args.conf_dir or client.conf_dir()
    try:
        cfg = configmod.load(conf_dir)
    except (configmod.ConfigError, ValueError) as exc:
        print(f"rmsctld: error: {exc}", file=sys.stderr)
        return 1
    if args.check_config:
        print(f"rmsctld: configuration in {cfg.directory} is valid: {len(cfg.nodes)} nodes, "
              f"{len(cfg.partitions)} partitions (default {cfg.default_partition}), "
              f"{len(cfg.tenants.accounts)} accounts, {len(cfg.qos.qos)} QoS levels")
        return 0
    ctl_cfg = cfg.cluster.controller
    try:
        daemon.setup_logging(args.log_file or (cfg.path(ctl_cfg.log_file) if ctl_cfg.log_file
                                               else None), args.verbose)
        lock = daemon.take_lock(os.path.join(cfg.spool_dir, "rmsctld.lock"), f"rmsctld is already running on spool {cfg.spool_dir}")
        daemon.ensure_dir(cfg.spool_dir, 0o700)
        daemon.write_pid_file(cfg.path(ctl_cfg.pid_file) if ctl_cfg.pid_file else None)
    except (daemon.AlreadyRunning, daemon.UnsafePath) as exc:
        print(f"rmsctld: error: {exc}", file=sys.stderr)
        log.error("%s", exc)
        return 1
    if os.geteuid() != 0:
        log.info("rmsctld runs as uid %d; whether jobs run as their submitters depends on "
                 "each rmsd, which says so when it starts", os.geteuid())
    from rmsbatch.ctld.service import Controller
    from rmsbatch.net.loop import Loop
    from rmsbatch.ctld.spool import Spool

    spool = Spool(cfg.spool_dir)
    daemon.raise_fd_limit()
    loop = Loop(loop_limits(cfg))
    signals = daemon.Signals()
    loop.add_waker(signals.wake_r)
    ctl = Controller(cfg, spool, loop)
    try:
        daemon.ensure_dir(os.path.dirname(cfg.socket), 0o755, at_least=True)
    except daemon.UnsafePath as exc:
        print(f"rmsctld: error: {exc}", file=sys.stderr)
        log.error("%s", exc)
        return 1
    loop.listen(cfg.socket, "api", mode=0o666)
    listen = cfg.tcp_listen
    if listen is not None:
        from rmsbatch.net.tcp import Authenticator
        try:
            loop.listen_tcp(*listen, "api", Authenticator(cfg.cluster.name,
                                                          cfg.cluster.controller.munge_socket))
        except OSError as exc:
            print(f"rmsctld: error: cannot listen on {listen[0]}:{listen[1]} (cluster.toml "
                  f"[controller] listen/address): {exc.strerror or exc}: pick a free port, or "
                  "stop what holds it", file=sys.stderr)
            log.error("cannot listen on %s:%d: %s", listen[0], listen[1], exc)
            return 1
        log.info("rmsctld %d: also serving TCP %s:%d (MUNGE)", os.getpid(), *listen)
    log.info("rmsctld %d: serving %s (spool %s, %d nodes, %d pending, %d running)",
             os.getpid(), cfg.socket, spool.path, len(cfg.nodes), len(ctl.pending), len(ctl.running))
    try:
        run(ctl, loop, signals, spool, conf_dir)
    finally:
        ctl.acct.stop()
    log.info("rmsctld %d: stopped", os.getpid())
    try:
        os.unlink(cfg.socket)
    except OSError:
        pass
    os.close(lock)
    return 0


def loop_limits(cfg):
    """What one user may hold in rmsctld, from cluster.toml [controller]."""
    from rmsbatch.net.loop import Limits, MiB
    c = cfg.cluster.controller
    return Limits(max_connections=c.max_connections_per_user,
                  max_buffered=c.max_buffered_per_user * MiB, max_request=c.max_request * MiB,
                  request_timeout=c.request_timeout)


STALL_S = 3.0       # the loop checks nodes every second: a longer gap is a stall


def run(ctl, loop, signals, spool, conf_dir) -> None:
    last_check = time.time()
    limits_of = ctl.config
    while not signals.stop:
        if ctl.config is not limits_of:     # reloaded (SIGHUP or rcontrol reconfigure)
            limits_of = ctl.config
            loop.limits = loop_limits(limits_of)
        messages = loop.poll(0 if ctl.needs_pass else 1.0)
        if messages:
            for conn, reply in ctl.handle_batch(messages):
                loop.send(conn, reply)
            ctl.flush()
        for conn in loop.closed:
            ctl.connection_closed(conn)
        loop.closed.clear()
        if ctl.needs_pass:
            _guarded(ctl, ctl.schedule)
        now = time.time()
        if now - last_check >= 1.0:
            if now - last_check > STALL_S:
                ctl.forgive(now - last_check - 1.0)
            last_check = now
            _guarded(ctl, ctl.check_nodes, now)
            _guarded(ctl, ctl.retention.tick, ctl, now)
            ctl.acct.tick()
        if signals.reload:
            signals.reload = False
            reload(ctl, conf_dir)


def _guarded(ctl, step, *args) -> None:
    """A pass or a check that cannot write the spool (a full disk) changes nothing and
    is tried again a second later; the controller keeps answering meanwhile."""
    import sqlite3
    try:
        step(*args)
    except sqlite3.Error as exc:
        log.error("spool %s: cannot write (%s): retrying in 1 s", ctl.spool.path, exc)
        ctl.outbox.clear()
        ctl.restore()
        ctl.backoff_until = time.time() + 1.0
        return
    ctl.flush()


def reload(ctl, conf_dir: str) -> None:
    """SIGHUP: the new configuration, or the old one and a line in the log saying why."""
    from rmsbatch import config as configmod
    from rmsbatch.ctld import audit
    from rmsbatch.ctld.requests import RequestError
    try:
        config = configmod.load(conf_dir)
        with ctl.spool.transaction():
            ctl.reconfigure(config)
            audit.record_reload(ctl, True, f"reloaded from {config.directory}")
    except (configmod.ConfigError, RequestError) as exc:
        log.error("configuration not reloaded (keeping the old one): %s", exc)
        _guarded(ctl, audit.record_reload, ctl, False, str(exc))
    except Exception:   # noqa: BLE001 - a reload must never take the controller down
        log.exception("configuration not reloaded (keeping the old one)")


if __name__ == "__main__":
    sys.exit(main())
