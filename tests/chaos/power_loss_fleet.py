"""The killed fleet: device daemons started, struck at chosen moments, inspected, drained."""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from device.errors import DeviceError
from device.model_store import MODEL_FILE, read_held_model
from device.samples import SampleStore
from device.spool import SPOOL_SUFFIX
from device.state_db import STATE_FILE, StateDB
from serialization import VerifyKey
from tests.chaos.power_loss_stores import inspect_stores, outbox_ids_live, sample_row
from tests.conftest import Broker
from tests.integration.device_fixtures import DaemonProcess, DeviceAccount, write_spool_file
from tests.integration.device_fixtures import write_config as write_device_config

__all__ = [
    "AIMS",
    "BUILT",
    "REJECTED",
    "Drained",
    "Fleet",
    "Sections",
    "Slot",
    "Tally",
]

logger = logging.getLogger(__name__)

AIMS = ("any", "model write", "training", "publish", "receipt")
"""What each kill waits for before it strikes (where it landed is judged afterwards)."""

BUILT = re.compile(r"update ([0-9a-f]+) from model v")
"""The trainer's line for an update committed to the outbox."""
REJECTED = re.compile(r"aggregator rejected update ([0-9a-f]+)")
_HOLDING = re.compile(r"holding model v")
_READY_TIMEOUT = 30.0
Sections = dict[str, dict[str, object]]


class Slot:
    """One device: its broker account, config, state directory and daemon process."""

    def __init__(self, name: str, root: Path, broker: Broker) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.state_dir = self.dir / "state"
        self.account = DeviceAccount(name=name, password=broker.add_account(name))
        self.config = self.dir / "device.toml"
        self.daemon = DaemonProcess(self.config, self.dir / "daemon.log")
        self.outboxed: set[bytes] = set()
        """Update ids seen in the outbox right after a kill."""
        self.fed = 0
        """Samples written to its spool directory."""
        self._offset = 0

    def start(self) -> None:
        """Start the daemon; ``output`` shows what it logs from now on."""
        self._offset = self.daemon.log.stat().st_size if self.daemon.log.exists() else 0
        self.daemon.start()

    def output(self) -> str:
        """What the daemon logged since its last start."""
        with self.daemon.log.open("rb") as log:
            log.seek(self._offset)
            return log.read().decode(errors="replace")

    def logged_ids(self, pattern: re.Pattern[str]) -> set[bytes]:
        """Update ids named by ``pattern`` anywhere in the daemon's log (all its lives)."""
        text = self.daemon.log.read_text(errors="replace") if self.daemon.log.exists() else ""
        return {bytes.fromhex(m) for m in pattern.findall(text)}

    def exited(self) -> int | None:
        """The exit code if the daemon ended by itself."""
        return None if self.daemon.process is None else self.daemon.process.poll()

    def counters(self) -> Counter[str]:
        """The daemon's persistent counters (read after it stopped), plus ``samples_stored``."""
        if not (self.state_dir / STATE_FILE).exists():
            return Counter()
        db = StateDB(self.state_dir / STATE_FILE)
        try:
            counters = Counter(db.counters())
            counters["samples_stored"] = len(SampleStore(db, max_samples=1))
            return counters
        finally:
            db.close()

    def samples_in_spool(self) -> int:
        """Samples in spool files the daemon has not ingested yet."""
        files = (self.state_dir / "spool").glob(f"*{SPOOL_SUFFIX}")
        return sum(len(path.read_bytes().splitlines()) for path in files)


@dataclass(kw_only=True)
class Tally:
    """What the kills found, filled by the slot threads under ``lock``."""

    tickets: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    kills: int = 0
    samples_twice: int = 0
    phases: Counter[str] = field(default_factory=Counter)
    aims: Counter[str] = field(default_factory=Counter)
    faults: list[str] = field(default_factory=list)
    """Every corrupt or unreadable store found after a kill."""
    restart_failures: list[str] = field(default_factory=list)
    harness_errors: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class Drained:
    """How the final restart went."""

    undrained: int
    """Daemons whose outbox was not empty by the deadline."""
    stale: int
    """Daemons not holding the aggregator's current release by the deadline."""
    unclean: int
    """Daemons that did not exit 0 on SIGTERM."""


class Fleet:
    """Daemon processes of one task, each with its own account and state directory."""

    def __init__(
        self,
        root: Path,
        broker: Broker,
        *,
        size: int,
        task: str,
        key_path: Path,
        verify_key: VerifyKey,
        features: int,
        classes: int,
        accepted: Callable[[bytes], bool],
    ) -> None:
        """``accepted`` tells whether the aggregator has accepted an update id."""
        self.broker = broker
        self.task = task
        self.key_path = key_path
        self.verify_key = verify_key
        self.accepted = accepted
        self.features = features
        self.classes = classes
        self.slots = [Slot(f"pl-{i}", root, broker) for i in range(size)]

    def configure(self, sections: Sections) -> None:
        """(Re)write every device config."""
        for slot in self.slots:
            write_device_config(
                slot.config,
                broker=self.broker,
                account=slot.account,
                task=self.task,
                state_dir=slot.state_dir,
                key_path=self.key_path,
                sections=sections,
            )

    def feed(self, every: float, rows: int, seed: int, stop: threading.Event) -> None:
        """Drop a spool file of ``rows`` samples (unique ids) into every spool directory
        every ``every`` s until ``stop``."""
        rng = np.random.default_rng(seed)
        uid = 0
        while not stop.wait(every):
            for slot in self.slots:
                x = []
                for _ in range(rows):
                    uid += 1
                    x.append(sample_row(uid, rng, self.features))
                y = rng.integers(0, self.classes, size=rows)
                write_spool_file(slot.state_dir / "spool", f"s{uid:09d}", np.stack(x), y)
                slot.fed += rows

    def kill_many(
        self,
        kills: int,
        *,
        run_for: tuple[float, float],
        aim_timeout: float,
        seed: int,
    ) -> Tally:
        """Start, strike, SIGKILL and inspect the daemons (one thread each) until ``kills``
        kills were made; every daemon is left dead."""
        tally = Tally(tickets=kills)
        workers = [
            threading.Thread(
                target=self._kill_loop,
                args=(slot, tally, run_for, aim_timeout, seed),
                daemon=True,
            )
            for slot in self.slots
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return tally

    def _kill_loop(
        self,
        slot: Slot,
        tally: Tally,
        run_for: tuple[float, float],
        aim_timeout: float,
        seed: int,
    ) -> None:
        rng = random.Random(f"{seed}-{slot.name}")
        try:
            while True:
                with tally.lock:
                    if tally.tickets == 0:
                        return
                    tally.tickets -= 1
                slot.start()
                aim = rng.choice(AIMS)
                self._strike(slot, aim, rng, run_for=run_for, timeout=aim_timeout)
                self._kill_and_inspect(slot, aim, tally)
        except Exception as exc:
            logger.exception("kill loop of %s failed", slot.name)
            with tally.lock:
                tally.harness_errors.append(f"{slot.name}: {exc!r}")
        finally:
            slot.daemon.ensure_stopped()

    def _kill_and_inspect(self, slot: Slot, aim: str, tally: Tally) -> None:
        exit_code = slot.exited()
        slot.daemon.kill()
        found = inspect_stores(
            slot.state_dir,
            slot.dir / "inspect",
            task=self.task,
            verify_key=self.verify_key,
            dim=self.features,
            connected="connected to " in slot.output(),
            accepted=self.accepted,
        )
        slot.outboxed |= found.outbox
        with tally.lock:
            if exit_code is None:
                tally.kills += 1
                tally.phases[found.phase] += 1
                tally.aims[aim] += 1
                if tally.kills % 25 == 0:
                    logger.info("%d kills so far: %s", tally.kills, dict(tally.phases))
            else:
                tally.restart_failures.append(f"{slot.name} exited by itself ({exit_code})")
                logger.warning("%s exited (%s):\n%s", slot.name, exit_code, slot.output()[-2000:])
            tally.faults.extend(f"{slot.name}: {fault}" for fault in found.faults)
            tally.samples_twice += found.samples_stored_twice

    def _strike(
        self,
        slot: Slot,
        aim: str,
        rng: random.Random,
        *,
        run_for: tuple[float, float],
        timeout: float,
    ) -> None:
        """Return at the aimed moment, so that the kill lands there. An aimed kill first
        waits for the daemon to connect (a loaded machine may take seconds to start Python),
        then at most ``timeout`` s for its moment."""
        if aim == "any":
            time.sleep(rng.uniform(*run_for))
            return
        ready_by = time.monotonic() + _READY_TIMEOUT
        while "connected to " not in slot.output() and time.monotonic() < ready_by:
            if slot.exited() is not None:
                return
            time.sleep(0.01)
        deadline = time.monotonic() + timeout
        if aim == "model write":
            temp = slot.state_dir / (MODEL_FILE + ".tmp")
            while not temp.exists() and time.monotonic() < deadline and slot.exited() is None:
                time.sleep(0.0005)
        elif aim == "training":
            if _wait_in_log(slot, _HOLDING, deadline):
                time.sleep(rng.uniform(0.0, 0.2))
        elif aim == "publish":
            if _wait_in_log(slot, BUILT, deadline):
                time.sleep(rng.uniform(0.0, 0.03))
        elif (built := _wait_in_log(slot, BUILT, deadline)) is not None:
            update_id = bytes.fromhex(built.group(1))
            while not self.accepted(update_id) and time.monotonic() < deadline:
                time.sleep(0.001)

    def drain(
        self, sections: Sections, timeout: float, current_version: Callable[[], int]
    ) -> Drained:
        """Restart every daemon with ``sections``; wait until each outbox is empty and each
        daemon holds the aggregator's ``current_version()``, then SIGTERM them all."""
        self.configure(sections)
        for slot in self.slots:
            slot.start()
        deadline = time.monotonic() + timeout
        undrained = list(self.slots)
        while undrained and time.monotonic() < deadline:
            time.sleep(0.2)
            undrained = [s for s in undrained if not _drained(s)]
        stale = list(self.slots)
        while stale and time.monotonic() < deadline:
            time.sleep(0.2)
            version = current_version()
            stale = [s for s in self.slots if self._held_version(s) != version]
        unclean = 0
        for slot in self.slots:
            try:
                unclean += slot.daemon.terminate(15) != 0
            except Exception:
                unclean += 1
                slot.daemon.ensure_stopped()
        return Drained(undrained=len(undrained), stale=len(stale), unclean=unclean)

    def _held_version(self, slot: Slot) -> int:
        try:
            held = read_held_model(slot.state_dir, task=self.task, verify_key=self.verify_key)
        except DeviceError:
            return -1
        return 0 if held is None else held.version

    def stop(self) -> None:
        """Kill whatever still runs."""
        for slot in self.slots:
            slot.daemon.ensure_stopped()


def _drained(slot: Slot) -> bool:
    try:
        return "connected to " in slot.output() and not outbox_ids_live(slot.state_dir)
    except Exception:  # the database may not exist yet: not drained
        return False


def _wait_in_log(slot: Slot, needle: re.Pattern[str], deadline: float) -> re.Match[str] | None:
    """The first match of ``needle`` the daemon logs from now on, or None by ``deadline``."""
    mark = len(slot.output())
    while time.monotonic() < deadline and slot.exited() is None:
        if found := needle.search(slot.output(), mark):
            return found
        time.sleep(0.005)
    return None
