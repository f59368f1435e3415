"""A swarm of simulated devices: compact asyncio MQTT 3.1.1 clients sharded over processes.

Each simulated device is one TCP connection with its own account (no thread, no paho): it
subscribes to its receipt topic, publishes counting-oracle updates on a fixed schedule and
resends each one until a Receipt says accepted or duplicate (the device outbox contract).
A shard process runs many devices on one event loop and writes what it saw to an .npz file.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing.sharedctypes
import resource
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import numpy as np

from serialization import ModelUpdate, Receipt, new_update_id, receipt_topic, update_topic
from tests.integration.mqtt_wire import utf8_string as _string
from tests.integration.mqtt_wire import varint as _varint
from tests.integration.oracle import oracle_tensors

logger = logging.getLogger(__name__)

CONNECTING, CONNECTED, RECEIPTED = 0, 1, 2
"""Values of a shard's phase slot: connecting its devices, all connected, all updates receipted."""


@dataclass(frozen=True, kw_only=True)
class ShardPlan:
    """What one shard process does: its devices and the fleet-wide send schedule."""

    shard: int
    host: str
    port: int
    task: str
    devices: Sequence[tuple[int, str, str]] = field(repr=False)  # (fleet index, name, password)
    fleet_size: int
    rounds: int
    rate: float
    buffer_size: int
    resend_after_s: float
    keepalive_s: int
    out: Path

    @property
    def model_size(self) -> int:
        """Oracle coordinates: one per update; update i = round * fleet_size + d."""
        return self.rounds * self.fleet_size


@dataclass(frozen=True, kw_only=True)
class ShardControl:
    """Shared memory between the scenario and its shards."""

    connected: multiprocessing.sharedctypes.Synchronized[int]
    phase: multiprocessing.sharedctypes.Synchronized[int]
    start_at: multiprocessing.sharedctypes.Synchronized[float]  # time.monotonic(); 0 = wait
    stop: Event


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def connect_packet(client_id: str, username: str, password: str, keepalive: int) -> bytes:
    """MQTT 3.1.1 CONNECT, clean session, with username and password."""
    header = _string("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", keepalive)
    return _packet(0x10, header + _string(client_id) + _string(username) + _string(password))


class SimulatedDevice(asyncio.Protocol):
    """One device's MQTT connection: CONNECT, SUBSCRIBE its receipts, QoS 1 publishes."""

    def __init__(self, shard: Shard, index: int, name: str, password: str) -> None:
        """Remember who it is; ``Shard.connect`` opens the connection."""
        self.shard, self.index, self.name, self.password = shard, index, name, password
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] | None = None
        self.connected = False
        self.last_out = 0.0
        self._buffer = bytearray()
        self._next_id = 0

    def packet_id(self) -> int:
        """The next MQTT packet identifier (1..65535)."""
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send CONNECT."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        keepalive = self.shard.plan.keepalive_s
        self.send(connect_packet(self.name, self.name, self.password, keepalive))

    def send(self, data: bytes) -> None:
        """Write raw bytes if connected."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.last_out = time.monotonic()

    def connection_lost(self, exc: Exception | None) -> None:
        """Mark the device offline; the shard reconnects it."""
        if self.connected:
            self.shard.lost(self)
        self.connected = False
        self.transport = None
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(ConnectionError(f"{self.name}: closed before SUBACK"))

    def data_received(self, data: bytes) -> None:
        """Split the stream into MQTT packets."""
        buf = self._buffer
        buf += data
        while len(buf) >= 2:
            length, shift, pos = 0, 0, 1
            while True:
                if pos >= len(buf):
                    return
                byte = buf[pos]
                length |= (byte & 0x7F) << shift
                shift, pos = shift + 7, pos + 1
                if not byte & 0x80:
                    break
            if len(buf) < pos + length:
                return
            self._handle(buf[0], bytes(buf[pos : pos + length]))
            del buf[: pos + length]

    def _handle(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == 2:  # CONNACK
            if body[1] != 0:
                self._fail(f"CONNACK refused with code {body[1]}")
                return
            topic = receipt_topic(self.shard.plan.task, self.name)
            self.send(_packet(0x82, struct.pack("!H", self.packet_id()) + _string(topic) + b"\1"))
        elif kind == 9:  # SUBACK
            if body[2] == 0x80:
                self._fail("SUBACK refused the receipt topic")
                return
            self.connected = True
            if self.ready is not None and not self.ready.done():
                self.ready.set_result(None)
        elif kind == 3:  # PUBLISH: a Receipt
            (topic_len,) = struct.unpack_from("!H", body)
            start = 2 + topic_len
            if (first >> 1) & 3:
                self.send(_packet(0x40, body[start : start + 2]))
                start += 2
            self.shard.on_receipt(Receipt.decode(body[start:]))

    def _fail(self, why: str) -> None:
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(ConnectionError(f"{self.name}: {why}"))
        if self.transport is not None:
            self.transport.close()


class Shard:
    """The devices of one process, their schedule, resends and what they observed."""

    def __init__(self, plan: ShardPlan, control: ShardControl) -> None:
        """Prepare per-update bookkeeping for this shard's updates."""
        self.plan, self.control = plan, control
        self.devices = [SimulatedDevice(self, d, n, p) for d, n, p in plan.devices]
        count = len(self.devices) * plan.rounds
        # local slot s = round * len(devices) + position in self.devices
        self.index = np.array(
            [r * plan.fleet_size + d.index for r in range(plan.rounds) for d in self.devices],
            dtype=np.int64,
        )
        self.first_sent = np.zeros(count)
        self.last_sent = np.zeros(count)
        self.receipted = np.zeros(count)
        self.sends = np.zeros(count, dtype=np.int32)
        self.statuses = {s: np.zeros(count, dtype=np.int32) for s in ("accepted", "duplicate")}
        self.rejected = np.zeros(count, dtype=np.int32)
        self.outstanding: dict[int, tuple[SimulatedDevice, bytes]] = {}
        self.slot_of: dict[bytes, int] = {}
        self.reconnects = 0
        self.connect_failures = 0
        self._offline: set[SimulatedDevice] = set()

    def lost(self, device: SimulatedDevice) -> None:
        """A connected device dropped: count it and queue a reconnect."""
        self.control.connected.value -= 1
        self._offline.add(device)

    async def connect(self, device: SimulatedDevice) -> bool:
        """Open one device's connection and wait for its SUBACK; False on failure."""
        loop = asyncio.get_running_loop()
        device.ready = loop.create_future()
        try:
            await loop.create_connection(lambda: device, self.plan.host, self.plan.port)
            await asyncio.wait_for(device.ready, 60)
        except (OSError, ConnectionError, TimeoutError) as exc:
            self.connect_failures += 1
            logger.debug("shard %d: %s did not connect: %s", self.plan.shard, device.name, exc)
            if device.transport is not None:
                device.transport.close()
            return False
        self.control.connected.value += 1
        return True

    async def connect_all(self, concurrency: int = 64) -> None:
        """Connect every device, ``concurrency`` at a time, retrying failures."""
        gate = asyncio.Semaphore(concurrency)

        async def one(device: SimulatedDevice) -> None:
            for attempt in range(20):
                async with gate:
                    if await self.connect(device):
                        return
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
            self._offline.add(device)

        await asyncio.gather(*(one(d) for d in self.devices))

    def on_receipt(self, receipt: Receipt) -> None:
        """Record a Receipt; accepted or duplicate ends the update's resends."""
        slot = self.slot_of.get(receipt.update_id)
        if slot is None:
            return
        if receipt.status in self.statuses:
            self.statuses[receipt.status][slot] += 1
            if not self.receipted[slot]:
                self.receipted[slot] = time.monotonic()
            self.outstanding.pop(slot, None)
        else:
            self.rejected[slot] += 1

    def _publish(self, slot: int) -> None:
        device, payload = self.outstanding[slot]
        if not device.connected:
            return
        topic = update_topic(self.plan.task, device.name)
        device.send(_packet(0x32, _string(topic) + struct.pack("!H", device.packet_id()) + payload))
        now = time.monotonic()
        self.first_sent[slot] = self.first_sent[slot] or now
        self.last_sent[slot] = now
        self.sends[slot] += 1

    def _enqueue(self, slot: int) -> None:
        device = self.devices[slot % len(self.devices)]
        update = ModelUpdate(
            task=self.plan.task, device_id=device.name, update_id=new_update_id(),
            base_version=1, num_samples=1, codec="topk",
            tensors=oracle_tensors(int(self.index[slot]), self.plan.model_size,
                                   self.plan.buffer_size),
        )  # fmt: skip
        self.slot_of[update.update_id] = slot
        self.outstanding[slot] = (device, update.encode())
        self._publish(slot)

    async def send_schedule(self, start: float) -> None:
        """Device d sends round r at start + (r + d / fleet) * period, period = fleet / rate."""
        period = self.plan.fleet_size / self.plan.rate
        due = start + self.index / self.plan.fleet_size * period
        for slot in range(len(self.index)):
            delay = due[slot] - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self._enqueue(slot)

    async def maintain(self) -> None:
        """Every second: reconnect dropped devices, resend overdue updates, ping idle links."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for device in list(self._offline)[:100]:
                self._offline.discard(device)
                self.reconnects += 1
                if not await self.connect(device):
                    self._offline.add(device)
            for slot in list(self.outstanding):
                if now - self.last_sent[slot] > self.plan.resend_after_s:
                    self._publish(slot)
            for device in self.devices:
                if device.connected and now - device.last_out > self.plan.keepalive_s / 2:
                    device.send(b"\xc0\x00")

    def _all_connected(self, _task: asyncio.Task[None]) -> None:
        if self.control.phase.value == CONNECTING:
            self.control.phase.value = CONNECTED

    async def run(self) -> None:
        """Connect, wait for the start signal, send, wait until stopped, then report."""
        connecting = asyncio.create_task(self.connect_all())
        connecting.add_done_callback(self._all_connected)
        while not self.control.start_at.value:  # the scenario may start before all connect
            await asyncio.sleep(0.05)
        maintainer = asyncio.create_task(self.maintain())
        await self.send_schedule(self.control.start_at.value)
        while self.outstanding:
            await asyncio.sleep(0.2)
        self.control.phase.value = RECEIPTED
        while not self.control.stop.is_set():
            await asyncio.sleep(0.2)
        maintainer.cancel()
        connecting.cancel()
        self._write()
        for device in self.devices:
            device.send(b"\xe0\x00")
            if device.transport is not None:
                device.transport.close()
        await asyncio.sleep(0.5)

    def _write(self) -> None:
        np.savez(
            self.plan.out, index=self.index, first_sent=self.first_sent,
            last_sent=self.last_sent, receipted=self.receipted, sends=self.sends,
            accepted=self.statuses["accepted"], duplicate=self.statuses["duplicate"],
            rejected=self.rejected,
            counters=np.array([self.reconnects, self.connect_failures], dtype=np.int64),
        )  # fmt: skip


def run_shard(plan: ShardPlan, control: ShardControl) -> None:
    """Process entry point: raise the fd limit to the hard one and run the shard."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    logging.basicConfig(level=logging.INFO, format=f"shard {plan.shard}: %(message)s")
    asyncio.run(Shard(plan, control).run())


def load_shard_results(paths: Sequence[Path]) -> dict[str, Any]:
    """Every shard's arrays, concatenated and ordered by update index."""
    parts = [dict(np.load(p)) for p in paths]
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "counters"}
    order = np.argsort(merged["index"])
    result: dict[str, Any] = {k: v[order] for k, v in merged.items()}
    result["counters"] = np.sum([p["counters"] for p in parts], axis=0)
    return result
