"""The counting oracle: one-hot updates whose released model counts how often each was folded.

Update i of N carries delta K * e_i (top-k codec, one entry). FedBuff with K, equal weights,
constant staleness and server SGD lr 1 adds sum(K e_i) / K = sum(e_i) per version, so
coordinate i of the released model is exactly the number of times update i was counted.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from serialization import EncodedTensor, ModelUpdate, Receipt, new_update_id
from tests.conftest import Broker
from tests.integration.aggregator_helpers import Device

ORACLE_TENSOR = "x"


def oracle_tasks(task: str, buffer_size: int) -> str:
    """The [[tasks]] table of an oracle task."""
    return (
        f'[[tasks]]\nname = "{task}"\nstrategy = "fedbuff"\nbuffer_size = {buffer_size}\n'
        'staleness = {name = "constant"}\nserver_optimizer = {name = "sgd", lr = 1.0}\n'
    )


def oracle_tensors(index: int, size: int, buffer_size: int) -> dict[str, EncodedTensor]:
    """The encoded delta K * e_index: a one-entry top-k tensor, built without the dense
    array (O(1), so a swarm can build updates for a large oracle model)."""
    return {
        ORACLE_TENSOR: EncodedTensor(
            shape=(size,),
            values=np.array([buffer_size], dtype=np.float32),
            indices=np.array([index], dtype=np.uint32),
        )
    }


def oracle_update(task: str, device: str, index: int, size: int, buffer_size: int) -> ModelUpdate:
    """Update ``index``: delta K * e_index, as a one-entry top-k tensor."""
    return ModelUpdate(
        task=task, device_id=device, update_id=new_update_id(), base_version=1,
        num_samples=1, codec="topk", tensors=oracle_tensors(index, size, buffer_size),
    )  # fmt: skip


class Publisher(threading.Thread):
    """A device that sends its updates at a given rate and resends each one until a
    Receipt says accepted or duplicate (the device outbox contract)."""

    def __init__(
        self,
        broker: Broker,
        name: str,
        task: str,
        updates: list[ModelUpdate],
        *,
        rate: float,
        resend_after: float = 1.5,
    ) -> None:
        """Prepare; start() runs it."""
        super().__init__(daemon=True)
        self.device = Device(broker, name, task)
        self.updates = {u.update_id: u for u in updates}
        self.pending = dict(self.updates)
        self.statuses: dict[bytes, list[str]] = {}
        self.rate = rate
        self.resend_after = resend_after
        self.sends = 0
        self.done = threading.Event()
        self.stopped = threading.Event()
        """Set by stop(): give up resending what has no receipt yet."""

    def _collect(self) -> None:
        while not self.device.receipts.empty():
            receipt: Receipt = self.device.receipts.get_nowait()
            self.statuses.setdefault(receipt.update_id, []).append(receipt.status)
            if receipt.status in ("accepted", "duplicate"):
                self.pending.pop(receipt.update_id, None)

    def run(self) -> None:
        """Send everything once at ``rate``, then resend what has no receipt."""
        sent_at: dict[bytes, float] = {}
        for update in list(self.updates.values()):
            if self.stopped.is_set():
                return
            self.device.publish(update.encode())
            sent_at[update.update_id] = time.monotonic()
            self.sends += 1
            self._collect()
            time.sleep(1.0 / self.rate)
        while self.pending and not self.stopped.is_set():
            self._collect()
            now = time.monotonic()
            for uid in list(self.pending):
                if now - sent_at[uid] > self.resend_after:
                    self.device.publish(self.pending[uid].encode())
                    sent_at[uid] = now
                    self.sends += 1
            time.sleep(0.05)
        if not self.pending:
            self.done.set()

    def stop(self) -> None:
        """Stop resending (the thread ends within one resend tick)."""
        self.stopped.set()

    def close(self) -> None:
        """Disconnect the device."""
        self.device.close()


def publishers(
    broker: Broker, task: str, names: list[str], *, total: int, buffer_size: int, rate: float
) -> list[Publisher]:
    """Devices ``names`` sharing updates 0..total-1 round-robin."""
    result = []
    for name in names:
        if name not in broker.passwords:
            broker.add_account(name)
    time.sleep(0.2)  # SIGHUP reload of the password file
    for offset, name in enumerate(names):
        updates = [oracle_update(task, name, i, total, buffer_size)
                   for i in range(offset, total, len(names))]  # fmt: skip
        result.append(Publisher(broker, name, task, updates, rate=rate / len(names)))
    return result


def log_tail(path: Path, lines: int = 40) -> str:
    """The end of a service log, for assertion messages."""
    return (
        "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
    )
