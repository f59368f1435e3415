"""The device daemon: one thread that owns the state and reacts to the MQTT link and time."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from device.config import DeviceConfig
from device.control import Pace, apply_control
from device.errors import ControlRefusedError, NoModelError, ReleaseRefusedError
from device.link import (
    Connected,
    ConnectRefused,
    Disconnected,
    LinkEvent,
    LinkSwitch,
    MqttLink,
    Published,
    Received,
    SubscribeRefused,
    Wakeup,
)
from device.model_store import HeldModel, ModelStore, load_verify_key
from device.models import check_samples
from device.outbox import Outbox
from device.residual import ResidualStore
from device.samples import SampleStore
from device.sender import UpdateSender
from device.spool import SpoolReader
from device.state_db import STATE_FILE, StateDB
from device.trainer import Trainer
from serialization import (
    Control,
    DeviceState,
    DeviceStatus,
    Receipt,
    SerializationError,
    control_topic,
    model_topic,
    receipt_topic,
    status_topic,
    update_topic,
)

__all__ = ["DeviceDaemon"]

logger = logging.getLogger(__name__)

_CONTROL_KEY = "control.payload"
_SHUTDOWN_PUBACK_TIMEOUT = 3.0


class DeviceDaemon:
    """Holds the signed model, predicts, learns from observed samples, sends updates.

    ``run()`` blocks (the CLI), ``start()`` runs it in a thread (embedding, tests); both end
    with ``stop()``. ``observe``, ``predict`` and the read-only properties are safe from any
    thread and work with or without a broker.
    """

    def __init__(self, config: DeviceConfig) -> None:
        self.config = config
        root = config.topic_root
        self._topics = {
            model_topic(config.task, root=root): "model",
            control_topic(config.task, root=root): "control",
            receipt_topic(config.task, config.device_id, root=root): "receipt",
        }
        self._status_topic = status_topic(config.task, config.device_id, root=root)
        self._update_topic = update_topic(config.task, config.device_id, root=root)
        verify_key = load_verify_key(config.aggregator_key)
        self.db = StateDB(config.state_dir / STATE_FILE)
        self.models = ModelStore(config.state_dir, task=config.task, verify_key=verify_key)
        self.samples = SampleStore(self.db, max_samples=config.samples.max_samples)
        self.spool = SpoolReader(config.spool_dir, self.db, self.samples)
        self.outbox = Outbox(
            self.db,
            max_updates=config.outbox.max_updates,
            max_bytes=config.outbox.max_bytes,
            max_payload_bytes=config.outbox.max_payload_bytes,
        )
        self._rng = np.random.default_rng()
        self.trainer = Trainer(
            self.db,
            self.samples,
            self.outbox,
            ResidualStore(self.db),
            device_id=config.device_id,
            rng=self._rng,
        )
        self.sender = UpdateSender(
            self.outbox,
            self.db,
            publish=self._publish_update,
            window=config.outbox.inflight,
            receipt_timeout=config.outbox.receipt_timeout,
            receipt_timeout_max=config.outbox.receipt_timeout_max,
        )
        self._base_pace = Pace(training=config.training, codec=config.codec)
        self.pace = self._base_pace
        stored_control = self.db.get(_CONTROL_KEY)
        if stored_control is not None:
            self._apply_control(bytes(stored_control), persist=False)
        self.connected = False
        self._link_up = False
        self.connections = int(self.db.get("connections", 0))
        self._events: queue.Queue[LinkEvent] = queue.Queue()
        self._link = self._new_link()
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    # --- the public API: any thread -------------------------------------------------------

    @property
    def held_model(self) -> HeldModel | None:
        """The verified model in use, if any."""
        return self.models.held

    def observe(self, x: ArrayLike, y: ArrayLike) -> int:
        """Store samples (one 1-D ``x`` with a scalar ``y``, or rows); return how many.

        Once a model is held they must fit it (InvalidSamplesError otherwise).
        """
        held = self.models.held
        if held is not None:
            xs = np.asarray(x, dtype=np.float32)
            rows = xs.reshape(1, -1) if xs.ndim == 1 else xs
            check_samples(held.spec, rows, np.asarray(y).reshape(-1), np.dtype(np.float32))
        added = self.samples.add(x, y)
        self._events.put(Wakeup())
        return added

    def predict(self, x: ArrayLike) -> NDArray[np.intp]:
        """Classes predicted by the held model; NoModelError before the first release."""
        held = self.models.held
        if held is None:
            raise NoModelError
        return held.predict(x)

    def predict_proba(self, x: ArrayLike) -> NDArray[np.float32]:
        """Class probabilities from the held model; NoModelError before the first release."""
        held = self.models.held
        if held is None:
            raise NoModelError
        return held.predict_proba(x)

    def set_online(self, online: bool) -> None:
        """Take the network away (a clean disconnect) or give it back, as a flaky link
        would; the daemon keeps observing, training and queueing updates while offline."""
        self._events.put(LinkSwitch(online=online))

    def wait_until(self, predicate: Callable[[DeviceDaemon], bool], timeout: float) -> bool:
        """Block until ``predicate(self)`` holds after a loop turn, or ``timeout`` s pass."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    def start(self) -> None:
        """Run the daemon in a background thread."""
        self._thread = threading.Thread(target=self.run, name="fedmq-device", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the loop to finish its current step, say offline and disconnect."""
        self._stop.set()
        self._events.put(Wakeup())

    def join(self, timeout: float | None = None) -> None:
        """Wait for a ``start()``-ed daemon to end."""
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> None:
        """Close the state database (after the loop ended)."""
        self.db.close()

    # --- the loop: the daemon thread only -------------------------------------------------

    def run(self) -> None:
        """Connect and serve until ``stop()``; returns after the clean disconnect."""
        self._link.start()
        self._link_up = True
        next_spool = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_spool:
                    self._guarded(self._ingest_spool)
                    next_spool = now + self.config.samples.spool_poll
                self._guarded(self._maybe_train, now)
                self._guarded(self.sender.pump, now)
                self._notify()
                deadline = min(
                    next_spool,
                    self.sender.next_deadline(),
                    self.trainer.next_interval_deadline(self.pace),
                )
                self._wait_for_events(max(0.0, deadline - time.monotonic()))
        finally:
            self._shutdown()

    def _guarded(self, step: Callable[..., object], *args: Any) -> None:
        try:
            step(*args)
        except Exception:
            self.db.bump("internal_errors")
            logger.exception("daemon step failed; continuing")

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _wait_for_events(self, timeout: float) -> None:
        try:
            event = self._events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._guarded(self._handle, event)
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return

    def _handle(self, event: LinkEvent) -> None:
        if isinstance(event, Received):
            kind = self._topics.get(event.topic)
            if kind == "model":
                self._offer_release(event.payload)
            elif kind == "control":
                self._apply_control(event.payload, persist=True)
            elif kind == "receipt":
                self._on_receipt(event.payload)
            self._link.ack(event)
        elif isinstance(event, Published):
            now = time.monotonic()
            ours = self.sender.on_puback(event.mid, event.reason_code, event.reason, now)
            if not ours and event.reason_code >= 0x80:
                self.db.bump("status_refused_by_broker")
                logger.warning("broker refused our status: %s", event.reason)
        elif isinstance(event, Connected):
            self._on_connected(event)
        elif isinstance(event, LinkSwitch):
            self._switch_link(event.online)
        elif isinstance(event, Disconnected):
            if self.connected:
                logger.info("disconnected: %s", event.reason)
            self.connected = False
            self.sender.on_disconnected()
        elif isinstance(event, ConnectRefused):
            self.db.bump("connect_refused")
            logger.warning("broker refused the connection: %s", event.reason)
        elif isinstance(event, SubscribeRefused):
            self.db.bump("subscribe_refused")
            logger.warning("broker refused a subscription: %s", event.reason)

    def _new_link(self) -> MqttLink:
        return MqttLink(
            self.config,
            self._events,
            connections=self.connections,
            offline_status=lambda n: self._status_payload("offline", n),
        )

    def _switch_link(self, online: bool) -> None:
        if online == self._link_up:
            return
        self._link_up = online
        if online:
            # paho cannot restart a stopped loop cleanly: a new client resumes the session.
            self._link = self._new_link()
            self._link.start()
            return
        self._link.stop()
        self.connected = False
        self.sender.on_disconnected()
        logger.info("network switched off; learning continues offline")

    def _on_connected(self, event: Connected) -> None:
        self.connections = event.connections
        self.db.put("connections", event.connections)
        self.connected = True
        logger.info(
            "connected to %s:%d (connection #%d, session %s)",
            self.config.broker.host,
            self.config.broker.port,
            event.connections,
            "resumed" if event.session_present else "new",
        )
        self._link.subscribe(
            [(topic, *self._subscription(kind)) for topic, kind in self._topics.items()]
        )
        self._publish_status("online")
        self.sender.on_connected(session_present=event.session_present)

    def _subscription(self, kind: str) -> tuple[int, int]:
        """(QoS, MQTT 5 retain handling) of the subscription to a topic of ``kind``.

        The model is QoS 0 with retain handling 0: the broker queues nothing while we are
        offline (QoS 1 would queue every release published meanwhile, each one a whole model
        we would refuse as a rollback) and sends the retained latest release on every
        connect. Control keeps QoS 1; retain handling 1 (only for a new subscription) skips
        the retained copy once we hold one.
        """
        if kind == "model":
            return 0, 0
        return 1, 1 if kind == "control" and self.pace.seq >= 0 else 0

    def _status_payload(self, state: DeviceState, connections: int) -> bytes:
        held = self.models.held
        return DeviceStatus(
            task=self.config.task,
            device_id=self.config.device_id,
            state=state,
            connections=connections,
            model_version=held.version if held else 0,
            at=time.time(),
        ).encode()

    def _publish_status(self, state: DeviceState) -> None:
        if self.connected:
            payload = self._status_payload(state, self.connections)
            self._link.publish(self._status_topic, payload, retain=True)

    def _publish_update(self, payload: bytes) -> int:
        return self._link.publish(self._update_topic, payload)

    def _offer_release(self, payload: bytes) -> None:
        self.db.bump("release_bytes_received", len(payload))
        try:
            held = self.models.offer(payload)
        except ReleaseRefusedError as exc:
            self.db.bump(f"release_refused_{exc.reason}")
            current = self.models.held
            logger.warning(
                "%s; still serving model v%s", exc, current.version if current else "(none)"
            )
            return
        if held is not None:
            self.db.bump("releases_accepted")
            self._publish_status("online")

    def _apply_control(self, payload: bytes, *, persist: bool) -> None:
        try:
            control = Control.decode(payload)
            if control.seq <= self.pace.seq:
                logger.debug("control seq %d already applied", control.seq)
                return
            self.pace = apply_control(self._base_pace, control, task=self.config.task)
        except (SerializationError, ControlRefusedError) as exc:
            self.db.bump("control_refused")
            logger.warning("control message refused: %s", exc)
            return
        if persist:
            self.db.put(_CONTROL_KEY, payload)
        logger.info("applied control seq %d: %s", control.seq, self.pace)

    def _on_receipt(self, payload: bytes) -> None:
        try:
            receipt = Receipt.decode(payload)
        except SerializationError as exc:
            self.db.bump("receipts_malformed")
            logger.warning("malformed receipt: %s", exc)
            return
        if receipt.task != self.config.task or receipt.device_id != self.config.device_id:
            self.db.bump("receipts_foreign")
            logger.warning("receipt for %s/%s ignored", receipt.task, receipt.device_id)
            return
        self.sender.on_receipt(receipt)

    def _ingest_spool(self) -> None:
        held = self.models.held
        batch = self.spool.ingest(
            dim=held.spec.n_features if held else None,
            n_classes=held.spec.n_classes if held else None,
        )
        if batch.files:
            logger.debug("spool: %s", batch)

    def _maybe_train(self, now: float) -> None:
        held = self.models.held
        if held is None or not self.trainer.due(self.pace, now, held_version=held.version):
            return
        if self._rng.random() >= self.pace.participation:
            self.trainer.skip(now, held_version=held.version)
            self.db.bump("rounds_skipped")
            logger.info("training round skipped (participation %.2f)", self.pace.participation)
            return
        self.sender.forget(self.trainer.run_round(held, self.pace, now))

    def _shutdown(self) -> None:
        if self.connected:
            said = self._link.publish_and_wait(
                self._status_topic,
                self._status_payload("offline", self.connections),
                retain=True,
                timeout=_SHUTDOWN_PUBACK_TIMEOUT,
            )
            if not said:
                logger.warning("offline status not acknowledged before disconnect")
        if self._link_up:
            self._link.stop()
        self.connected = False
        self._notify()
        logger.info("stopped")
