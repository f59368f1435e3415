"""Chaos scenario 4: every attack a device account (or an insider on the model topic) can
try against the shipped broker, a running aggregator and a device daemon, counted."""

from __future__ import annotations

import contextlib
import logging
import queue
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis

from aggregator.keys import TaskKeys
from serialization import (
    control_topic,
    model_topic,
    receipt_topic,
    status_topic,
    update_topic,
)
from tests.chaos.attack_releases import forge_releases
from tests.chaos.report import ChaosReport
from tests.conftest import SERVICE_ACCOUNT, Broker, launch_broker, launch_redis
from tests.integration.aggregator_helpers import (
    Device,
    init_model,
    make_update,
    running_service,
    write_config,
)
from tests.integration.mqtt_peer import Peer, Received
from tests.integration.test_acl import RawClient

__all__ = ["FULL", "REDUCED", "AttackParams", "run"]

logger = logging.getLogger(__name__)

ATTACKER, VICTIM, BYSTANDER = "dev-c", "dev-a", "dev-b"
_SUCCESS = (0x00, 0x10)
"""PUBACK codes of a publish the broker took (0x10: taken, no subscriber yet)."""
_MODEL = {"W": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)}


@dataclass(frozen=True, kw_only=True)
class AttackParams:
    """How often each attempt is repeated."""

    shared_updates: int
    """Updates the victim sends while the attacker sits in the aggregators' share group."""
    claims: int
    """Updates the attacker sends claiming another device's id."""


FULL = AttackParams(shared_updates=40, claims=30)
REDUCED = FULL


@dataclass(kw_only=True)
class _Tally:
    """Attempts and violations that got through, by category."""

    attempts: Counter[str] = field(default_factory=Counter)
    through: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def count(self, category: str, got_through: bool, what: str) -> None:
        self.attempts[category] += 1
        if got_through:
            self.through[category] += 1
            self.notes.append(f"{category}: {what}")


class _World:
    """The broker, watchers of every topic of the task, and the attacker's connection."""

    def __init__(self, broker: Broker, task: str) -> None:
        self.broker = broker
        self.task = task
        self.watchers = {
            SERVICE_ACCOUNT: self.peer(SERVICE_ACCOUNT, client_id="agg-watch"),
            VICTIM: self.peer(VICTIM),
        }
        self.watchers[SERVICE_ACCOUNT].subscribe(f"fl/v1/{task}/#")
        self.watchers[VICTIM].subscribe(
            receipt_topic(task, VICTIM), model_topic(task), control_topic(task)
        )
        self.attacker = self.peer(ATTACKER)
        self.attacker.subscribe(model_topic(task))
        self.sentinel_topic = model_topic(task)

    def peer(self, username: str, *, client_id: str | None = None) -> Peer:
        """A connected Peer of a provisioned account."""
        peer = Peer(
            self.broker.port, username, self.broker.passwords[username], client_id=client_id
        )
        if peer.connect() != 0:
            raise RuntimeError(f"{username} could not log in")
        return peer

    def sentinel(self) -> bytes:
        """A message everyone here may read, published by the service account."""
        payload = b"sentinel-" + secrets.token_hex(8).encode()
        self.watchers[SERVICE_ACCOUNT].publish(self.sentinel_topic, payload)
        return payload

    def seen_by(self, peers: dict[str, Peer]) -> dict[str, list[Received]]:
        """What each peer received up to the next sentinel."""
        mark = self.sentinel()
        return {name: peer.received_before(mark) for name, peer in peers.items()}

    def close(self) -> None:
        for peer in (*self.watchers.values(), self.attacker):
            peer.close()


def _publishes(world: _World, tally: _Tally) -> None:
    """Publishes a device (and the service account) may not make, each checked by its
    PUBACK and by what every watcher received."""
    t = world.task
    attempts = {
        "publish by a device": (world.attacker, [
            update_topic(t, VICTIM), status_topic(t, VICTIM), receipt_topic(t, VICTIM),
            receipt_topic(t, ATTACKER), model_topic(t), control_topic(t),
            model_topic("othertask"), status_topic(t, "ghost"), "$SYS/broker/fedmq",
            f"fl/v1/{t}/dev", "other/root",
        ]),
        "publish by the service account as a device": (world.watchers[SERVICE_ACCOUNT], [
            update_topic(t, VICTIM), status_topic(t, VICTIM),
        ]),
    }  # fmt: skip
    for category, (peer, topics) in attempts.items():
        for topic in topics:
            for retain in (False, True):
                payload = f"forged:{topic}:{retain}:{secrets.token_hex(4)}".encode()
                code = peer.publish(topic, payload, retain=retain)
                seen = world.seen_by(world.watchers)
                delivered = [n for n, got in seen.items() if payload in [m.payload for m in got]]
                tally.count(
                    category, code in _SUCCESS or bool(delivered),
                    f"{topic} retain={retain}: PUBACK {code:#x}, delivered to {delivered}",
                )  # fmt: skip
    with RawClient(world.broker.port, ATTACKER, world.broker.passwords[ATTACKER],
                   client_id=f"{ATTACKER}-raw") as raw:  # fmt: skip
        try:
            code = raw.publish(f"fl/v1/{t}/dev/+/update", b"wildcard")
        except (AssertionError, OSError):
            code = 0x80  # the broker dropped the connection: refused
    tally.count("publish by a device", code in _SUCCESS, f"wildcard topic: PUBACK {code:#x}")


def _reads(world: _World, tally: _Tally) -> None:
    """Subscriptions to what a device may not read, then traffic on every topic type."""
    t = world.task
    filters = [
        update_topic(t, VICTIM), receipt_topic(t, VICTIM), status_topic(t, VICTIM),
        f"fl/v1/{t}/dev/+/update", f"fl/v1/{t}/dev/+/receipt", f"fl/v1/+/dev/{VICTIM}/+",
        "#", "$SYS/#", "$SYS/broker/version", f"$share/aggregators/fl/v1/{t}/dev/+/receipt",
        f"$share/spy/fl/v1/{t}/#",
    ]  # fmt: skip
    victim = world.watchers[VICTIM]
    service = world.watchers[SERVICE_ACCOUNT]
    allowed = {model_topic(t), control_topic(t), receipt_topic(t, ATTACKER)}
    for topic_filter in filters:
        world.attacker.subscribe(topic_filter)
        victim.publish(update_topic(t, VICTIM), b"victim-update")
        victim.publish(status_topic(t, VICTIM), b"victim-status", retain=True)
        service.publish(receipt_topic(t, VICTIM), b"victim-receipt")
        time.sleep(0.2)  # retained $SYS topics arrive right after the SUBACK
        got = world.seen_by({"attacker": world.attacker, **world.watchers})["attacker"]
        leaked = [m.topic for m in got if m.topic not in allowed]
        tally.count("read by a device", bool(leaked), f"{topic_filter}: received {leaked}")
        world.attacker.client.unsubscribe(topic_filter)


def _shared_subscription(world: _World, tally: _Tally, params: AttackParams) -> None:
    """The attacker joins the aggregators' share group; every update of the victim must
    still reach the aggregator (a Receipt each) and none the attacker."""
    t = world.task
    spy = world.peer(ATTACKER, client_id=f"{ATTACKER}-spy")
    spy.subscribe(f"$share/aggregators/fl/v1/{t}/dev/+/update", world.sentinel_topic)
    device = Device(world.broker, VICTIM, t)
    try:
        updates = [
            make_update(t, VICTIM, {k: np.full_like(v, 0.01) for k, v in _MODEL.items()})
            for _ in range(params.shared_updates)
        ]
        for update in updates:
            device.publish(update.encode())
        answered: set[bytes] = set()
        deadline = time.monotonic() + 20.0
        while len(answered) < len(updates) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                answered.add(device.receipt(timeout=0.5).update_id)
        stolen = [m for m in world.seen_by({"spy": spy})["spy"] if m.topic != model_topic(t)]
        for update in updates:
            lost = update.update_id not in answered
            tally.count(
                "shared-subscription hijack", lost,
                f"update {update.update_id.hex()[:8]} never reached the aggregator",
            )  # fmt: skip
        tally.count("shared-subscription hijack", bool(stolen), f"spy received {len(stolen)}")
    finally:
        device.close()
        spy.close()


def _logins(world: _World, tally: _Tally) -> None:
    """Logins without the account's password, and a client id other than the username."""
    port, passwords = world.broker.port, world.broker.passwords
    tries = [(None, None), (VICTIM, "wrong"), (VICTIM, ""), ("nobody", "x"),
             (ATTACKER, passwords[VICTIM]), (VICTIM, passwords[ATTACKER])]  # fmt: skip
    for username, password in tries:
        peer = Peer(port, username, password)
        code = peer.connect()
        if code == 0:
            peer.close()
        tally.count("login without the password", code == 0, f"{username!r}: CONNACK {code:#x}")
    impostor = Peer(port, ATTACKER, passwords[ATTACKER], client_id=f"{VICTIM}-impostor")
    code = impostor.connect()
    if code == 0:
        forged = b"impostor-" + secrets.token_hex(4).encode()
        puback = impostor.publish(update_topic(world.task, VICTIM), forged)
        seen = world.seen_by(world.watchers)
        delivered = any(forged in [m.payload for m in got] for got in seen.values())
        tally.count(
            "client id other than the username", puback in _SUCCESS or delivered,
            f"as {VICTIM}'s topic: PUBACK {puback:#x}",
        )  # fmt: skip
        impostor.close()


def _claims(broker: Broker, redis_url: str, task: str, tally: _Tally, params: AttackParams) -> None:
    """The attacker's payloads claiming another device's id: rejected with the reason,
    counted for nobody (Receipt, aggregator metric, Redis device registry)."""
    device = Device(broker, ATTACKER, task)
    victim = Device(broker, VICTIM, task)
    claimed = [VICTIM, BYSTANDER, "ghost-device"]
    registry = TaskKeys.of(task).devices

    def counted() -> Counter[str]:
        with redis.Redis.from_url(redis_url) as client:
            return Counter({
                k.decode(): int(v) for k, v in client.hgetall(registry).items()
                if not k.endswith(b":seen")
            })  # fmt: skip

    try:
        own = make_update(task, VICTIM, {k: np.full_like(v, 0.01) for k, v in _MODEL.items()})
        victim.publish(own.encode())
        victim.receipt(timeout=15.0)
        before = counted()
        for i in range(params.claims):
            update = make_update(
                task, claimed[i % len(claimed)],
                {k: np.full_like(v, 0.01) for k, v in _MODEL.items()},
                update_id=own.update_id if i % 5 == 4 else None,
            )  # fmt: skip
            device.publish(update.encode())
            receipt = device.receipt(timeout=15.0)
            ok = receipt.status == "rejected" and receipt.reason == "device_mismatch"
            tally.count(
                "device claiming another device's id", not ok,
                f"claimed {update.device_id}: {receipt.status} {receipt.reason}",
            )  # fmt: skip
        after = counted()
        after.subtract(before)
        grown = {d: n for d, n in after.items() if n}
        tally.count(
            "device claiming another device's id", bool(grown),
            f"Redis device registry grew by {grown} during the claims",
        )  # fmt: skip
    finally:
        device.close()
        victim.close()


def run(params: AttackParams, workdir: Path) -> ChaosReport:
    """Start Mosquitto, Redis, an aggregator and a daemon; try every attack; count."""
    report = ChaosReport(scenario="4. attacks")
    tally = _Tally()
    broker = launch_broker(workdir / "broker")
    redis_server = launch_redis(workdir / "redis")
    try:
        task = f"atk{secrets.token_hex(3)}"
        redis_url = f"redis://127.0.0.1:{redis_server.port}/0"
        config = write_config(
            workdir / "aggregator", broker=broker, redis_url=redis_url,
            tasks=f'[[tasks]]\nname = "{task}"\nbuffer_size = 1000\n',
        )  # fmt: skip
        init_model(config, task, _MODEL)
        with running_service(config) as service:
            world = _World(broker, task)
            try:
                _publishes(world, tally)
                _reads(world, tally)
                _logins(world, tally)
                _shared_subscription(world, tally, params)
            finally:
                world.close()
            _claims(broker, redis_url, task, tally, params)
            rejected = service.metric(
                "fedmq_updates_rejected_total", {"task": task, "reason": "device_mismatch"}
            )
            report.figure("aggregator metric: rejected device_mismatch", int(rejected))
        forge_releases(broker, workdir / "device", tally)
    finally:
        redis_server.stop()
        broker.server.stop()
    for category in tally.attempts:
        report.figure(f"attempts: {category}", tally.attempts[category])
    for note in tally.notes:
        logger.warning("attack got through: %s", note)
    report.figure("violations that got through, by category", dict(tally.through))
    for category in tally.attempts:
        report.goal(f"got through: {category}", "0", tally.through[category],
                    tally.through[category] == 0)  # fmt: skip
    total = sum(tally.through.values())
    report.goal("violations that got through (all attempts)", "0",
                f"{total} of {sum(tally.attempts.values())}", total == 0)  # fmt: skip
    return report
