"""``fedmq device``: run the device daemon, predict offline, show a device's state."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fedmq.device_claim import ClaimError, claim_config

if TYPE_CHECKING:
    from device.config import DeviceConfig
    from fedmq.cli import Subparsers

__all__ = ["read_rows", "register"]

logger = logging.getLogger(__name__)


def register(subparsers: Subparsers) -> None:
    """Add ``device run|predict|status`` (device/ and paho are imported only when run)."""
    parser = subparsers.add_parser(
        "device", help="the daemon a sensor runs: hold the model, predict, learn, send updates"
    )
    actions = parser.add_subparsers(dest="device_action", metavar="ACTION", required=True)
    run = actions.add_parser("run", help="run the daemon until SIGTERM/SIGINT")
    run.add_argument(
        "--claim-dir",
        type=Path,
        help="with --config DIR: claim one of DIR's device configs here (scaled containers)",
    )
    run.set_defaults(handler=_run)
    predict = actions.add_parser("predict", help="predict with the stored model (no broker needed)")
    predict.add_argument(
        "--input",
        required=True,
        help="JSON file of feature rows ('-' for stdin): a JSON array, or one row per line; "
        'a row is [numbers] or {"x": [numbers]}',
    )
    predict.set_defaults(handler=_predict)
    status = actions.add_parser("status", help="print the device's state as JSON")
    status.set_defaults(handler=_status)
    run.add_argument(
        "--config",
        type=Path,
        required=True,
        help="device TOML file, or a directory of them with --claim-dir",
    )
    for action in (predict, status):
        action.add_argument("--config", type=Path, required=True, help="device TOML file")


def read_rows(text: str) -> list[list[float]]:
    """Feature rows from a JSON array or JSON lines; each row a list or ``{"x": list}``."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        single = not isinstance(whole, list) or not all(isinstance(i, list | dict) for i in whole)
        items = [whole] if single else whole
    rows = []
    for item in items:
        row = item.get("x") if isinstance(item, dict) else item
        if not isinstance(row, list):
            raise ValueError(f"not a row of numbers: {item!r:.80}")
        rows.append(row)
    return rows


def _config(args: argparse.Namespace) -> DeviceConfig:
    from device.config import load_config

    path: Path = args.config
    claim_dir: Path | None = getattr(args, "claim_dir", None)
    if path.is_dir():
        if claim_dir is None:
            raise ClaimError(f"--config {path} is a directory: add --claim-dir")
        path = claim_config(path, claim_dir, socket.gethostname())
        print(f"fedmq device run: claimed {path.name}", file=sys.stderr)
    return load_config(path)


def _run(args: argparse.Namespace) -> int:
    from device.daemon import DeviceDaemon
    from device.errors import DeviceError

    try:
        daemon = DeviceDaemon(_config(args))
    except (DeviceError, OSError, ClaimError) as exc:
        print(f"fedmq device run: {exc}", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: daemon.stop())
    try:
        daemon.run()
    finally:
        daemon.close()
    return 0


def _predict(args: argparse.Namespace) -> int:
    from device.errors import DeviceError
    from device.model_store import load_verify_key, read_held_model

    try:
        config = _config(args)
        held = read_held_model(
            config.state_dir, task=config.task, verify_key=load_verify_key(config.aggregator_key)
        )
        if held is None:
            print("fedmq device predict: no model is held yet", file=sys.stderr)
            return 1
        text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text()
        rows = read_rows(text)
        if not rows:
            raise ValueError("the input holds no rows")
        labels = held.predict(rows)
        probabilities = held.predict_proba(rows)
    except (DeviceError, OSError, ValueError) as exc:
        print(f"fedmq device predict: {exc}", file=sys.stderr)
        return 2
    result = {
        "model_version": held.version,
        "labels": [int(label) for label in labels],
        "probabilities": [[float(p) for p in row] for row in probabilities],
    }
    print(json.dumps(result))
    return 0


def _status(args: argparse.Namespace) -> int:
    from device.errors import DeviceError, ReleaseRefusedError
    from device.model_store import load_verify_key, read_held_model
    from device.state_db import STATE_FILE, StateDB

    try:
        config = _config(args)
        try:
            held = read_held_model(
                config.state_dir,
                task=config.task,
                verify_key=load_verify_key(config.aggregator_key),
            )
        except ReleaseRefusedError as exc:
            logger.warning("stored model not usable: %s", exc)
            held = None
        db = StateDB(config.state_dir / STATE_FILE)
    except DeviceError as exc:
        print(f"fedmq device status: {exc}", file=sys.stderr)
        return 2
    try:
        state = {
            "device_id": config.device_id,
            "task": config.task,
            "model_version": held.version if held else None,
            "samples": db.query("SELECT COUNT(*) FROM samples")[0][0],
            "outbox": db.query("SELECT COUNT(*) FROM outbox")[0][0],
            "connections": db.get("connections", 0),
            "counters": db.counters(),
        }
    finally:
        db.close()
    print(json.dumps(state, indent=2))
    return 0
