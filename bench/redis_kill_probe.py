"""Does Redis (AOF on) lose acknowledged writes when its process is SIGKILLed, per fsync policy?

For each (appendfsync policy, disk) combination a fresh Redis runs in a temporary directory.
Each kill cycle: a client INCRs a counter in a loop (plus a 200-byte SET per INCR, so the AOF
buffer of an event-loop pass is bigger) until a timer SIGKILLs the server after a random
0.3-1.7 s; the server restarts on the same port and directory, and the counter it recovered
is compared with the last value it acknowledged. On a "busy" disk a ballast process writes
and fdatasyncs 256 MiB files in a loop in the same directory, so that the background fsync
of ``everysec`` is slow (Redis then postpones its AOF write and replies anyway). The seed
fixes the kill delays; whether a kill loses writes depends on timing, so counts vary.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path
from types import FrameType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from fedmq.local_servers import LocalServer, start_redis

__all__ = ["main"]

COUNTER = "n"
PAD = b"x" * 200
BALLAST_CHUNKS = 256
"""MiB per ballast file, written and fdatasynced before the next one starts."""
KILL_AFTER_S = (0.3, 1.7)


@dataclass
class Tally:
    """Outcome of the kills of one (policy, disk) combination."""

    kills: int = 0
    acknowledged: int = 0
    lossy_kills: int = 0
    lost: int = 0
    max_lost: int = 0


def _write_ballast(directory: str, stop: Event, parent: int) -> None:
    """Child process: write and fdatasync 256 MiB files until told to stop or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us, also on Ctrl-C
    path = Path(directory) / "ballast"
    chunk = bytes(1 << 20)
    try:
        while not stop.is_set() and os.getppid() == parent:
            with path.open("wb") as file:
                for _ in range(BALLAST_CHUNKS):
                    if stop.is_set():
                        break
                    file.write(chunk)
                file.flush()
                os.fdatasync(file.fileno())
    finally:
        path.unlink(missing_ok=True)


@contextmanager
def disk_ballast(directory: Path) -> Iterator[None]:
    """Keep the disk under ``directory`` busy while the block runs; stop and clean up after."""
    directory.mkdir(parents=True, exist_ok=True)
    context = mp.get_context("spawn")
    stop = context.Event()
    args = (str(directory), stop, os.getpid())
    process = context.Process(target=_write_ballast, args=args, name="ballast", daemon=True)
    process.start()
    try:
        yield
    finally:
        stop.set()
        process.join(60)
        if process.is_alive():
            process.kill()
            process.join()
        for leftover in directory.glob("ballast*"):
            leftover.unlink(missing_ok=True)


def _client(server: LocalServer) -> redis.Redis:
    # No retries: a reply lost to the kill must end the loop, not be resent.
    return redis.Redis(port=server.port, socket_timeout=30, retry=Retry(NoBackoff(), 0))


def _read_counter(server: LocalServer, timeout: float = 60.0) -> int:
    """The counter once the restarted server has loaded its AOF."""
    deadline = time.monotonic() + timeout
    with _client(server) as client:
        while True:
            try:
                return int(client.get(COUNTER) or 0)
            except redis.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def kill_once(server: LocalServer, delay: float) -> tuple[int, int, float]:
    """One cycle: write until SIGKILL after ``delay`` s, restart; (acknowledged, lost, INCR/s)."""
    base = _read_counter(server)
    acked = base
    killer = threading.Timer(delay, server.kill)
    with _client(server) as client:
        killer.start()
        try:
            while True:
                acked = int(client.incr(COUNTER))
                client.set(f"k{acked}", PAD)
        except (redis.ConnectionError, redis.TimeoutError):
            pass
        finally:
            killer.join()
    server.start(timeout=60)
    recovered = _read_counter(server)
    return acked - base, max(acked - recovered, 0), (acked - base) / delay


def run_combination(root: Path, policy: str, disk: str, kills: int, seed: int) -> Tally:
    """All kills of one combination against a fresh Redis; the server is stopped after."""
    rng = random.Random(f"{seed}-{policy}-{disk}")
    workdir = root / f"{policy}-{disk}"
    tally = Tally()
    with disk_ballast(workdir) if disk == "busy" else nullcontext():
        server = start_redis(workdir, appendfsync=policy)
        try:
            for kill in range(kills):
                acknowledged, lost, rate = kill_once(server, rng.uniform(*KILL_AFTER_S))
                tally.kills += 1
                tally.acknowledged += acknowledged
                if lost:
                    tally.lossy_kills += 1
                    tally.lost += lost
                    tally.max_lost = max(tally.max_lost, lost)
                    print(
                        f"  {policy}/{disk} kill {kill}: lost {lost} acknowledged INCRs"
                        f" (~{lost / rate:.2f} s at {rate:.0f} INCR/s)",
                        flush=True,
                    )
        finally:
            server.stop()
    return tally


def _redis_version(root: Path) -> str:
    server = start_redis(root / "version")
    try:
        with _client(server) as client:
            info = client.info("server")
        return f"{info['redis_version']} ({server.origin})"
    finally:
        server.stop()


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    sys.exit(128 + signum)


def main() -> None:
    """Parse the options, run every combination, print one row per combination."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--kills", type=int, default=80, help="SIGKILLs per combination")
    parser.add_argument("--policies", default="always,everysec", help="appendfsync values")
    parser.add_argument("--disk", default="idle,busy", help="idle and/or busy (ballast)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the kill delays")
    args = parser.parse_args()
    policies = [p for p in args.policies.split(",") if p]
    disks = [d for d in args.disk.split(",") if d]
    if bad := [d for d in disks if d not in ("idle", "busy")]:
        parser.error(f"--disk takes idle and/or busy, not {bad}")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with tempfile.TemporaryDirectory(prefix="redis-kill-probe-") as tmp:
        root = Path(tmp)
        print(f"Redis {_redis_version(root)}, AOF on; work dir {root}; seed {args.seed}")
        print(f"SIGKILL after {KILL_AFTER_S[0]}-{KILL_AFTER_S[1]} s of INCR + 200-byte SET")
        rows = [
            (policy, disk, run_combination(root, policy, disk, args.kills, args.seed))
            for policy in policies
            for disk in disks
        ]
    header = ("appendfsync", "disk", "kills", "acked INCRs", "lossy kills", "lost", "max lost")
    print(" ".join(f"{h:>12}" for h in header))
    for policy, disk, t in rows:
        cells = (policy, disk, t.kills, t.acknowledged, t.lossy_kills, t.lost, t.max_lost)
        print(" ".join(f"{c:>12}" for c in cells))


if __name__ == "__main__":
    main()
