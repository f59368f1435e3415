"""``fedmq aggregator ...``: run the service, init a task, keygen, status, rollback."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aggregator.config import AggregatorConfig
    from fedmq.cli import Subparsers
    from serialization import SigningKey

__all__ = ["register"]

logger = logging.getLogger(__name__)

_KEY_FILE = "release_signing_key.pem"
_PUBLIC_FILE = "release_verify_key.pem"


def register(subparsers: Subparsers) -> None:
    """Add ``aggregator`` and its subcommands."""
    parser = subparsers.add_parser("aggregator", help="the aggregator service and its admin")
    commands = parser.add_subparsers(dest="aggregator_command", metavar="ACTION", required=True)

    run = commands.add_parser("run", help="serve the configured tasks until SIGTERM")
    _config_option(run)
    run.set_defaults(handler=_run)

    init = commands.add_parser("init", help="store a task's initial model (version 1)")
    _config_option(init)
    init.add_argument("--task", required=True)
    source = init.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", choices=["softmax"], help="zeros of a device model kind")
    source.add_argument("--from", dest="source", type=Path, help=".npz or signed release file")
    source.add_argument(
        "--tensor", action="append", metavar="NAME=D1xD2", help="a zero tensor (repeatable)"
    )
    init.add_argument("--features", type=int, default=0, help="--model softmax: inputs")
    init.add_argument("--classes", type=int, default=0, help="--model softmax: classes")
    init.add_argument(
        "--force",
        action="store_true",
        help="replace an existing model by the next version, dropping pending updates",
    )
    init.set_defaults(handler=_init)

    keygen = commands.add_parser("keygen", help="create an Ed25519 release signing key")
    keygen.add_argument("--out", type=Path, required=True, help="directory for the two PEM files")
    keygen.add_argument("--force", action="store_true", help="overwrite an existing key")
    keygen.set_defaults(handler=_keygen)

    status = commands.add_parser("status", help="show each task's state from Redis")
    _config_option(status)
    status.add_argument("--task", action="append", help="only this task (repeatable)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)

    rollback = commands.add_parser("rollback", help="publish a new version with old weights")
    _config_option(rollback)
    rollback.add_argument("--task", required=True)
    rollback.add_argument("--to", type=int, required=True, metavar="VERSION")
    rollback.add_argument(
        "--publish",
        action="store_true",
        help="also publish the release with this config's MQTT account (else the running "
        "leader publishes it within a second)",
    )
    rollback.set_defaults(handler=_rollback)


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="aggregator.toml (FL_* variables override)")


def _load(args: argparse.Namespace) -> AggregatorConfig:
    from aggregator.config import load_config

    return load_config(args.config)


def _signing_key(config: AggregatorConfig) -> SigningKey:
    from serialization import SigningKey

    return SigningKey.from_pem(config.signing_key_path.read_bytes())


def _fail(message: str) -> int:
    print(f"fedmq aggregator: {message}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    from aggregator.errors import AggregatorError
    from aggregator.service import AggregatorService

    try:
        config = _load(args)
        service = AggregatorService(config, _signing_key(config))
    except (AggregatorError, OSError, ValueError) as exc:
        return _fail(str(exc))
    if not config.tasks:
        return _fail("no [[tasks]] in the configuration")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, service.stop)
        await service.run()

    try:
        asyncio.run(main())
    except AggregatorError as exc:
        return _fail(str(exc))
    return 0


def _init(args: argparse.Namespace) -> int:
    from aggregator.admin import initialise_task
    from aggregator.errors import AggregatorError
    from aggregator.model_init import model_from_file, softmax_model, zeros_model
    from serialization import Scalar, validate_identifier

    try:
        validate_identifier(args.task, "task")
        config = _load(args)
        key = _signing_key(config)
        metadata: dict[str, Scalar] = {}
        if args.model == "softmax":
            model, metadata = softmax_model(args.features, args.classes)
        elif args.source is not None:
            model, metadata = model_from_file(args.source, key.verify_key)
        else:
            model = zeros_model(args.tensor)
        version = asyncio.run(
            initialise_task(config, key, args.task, model, metadata, force=args.force)
        )
    except (AggregatorError, OSError, ValueError) as exc:
        return _fail(str(exc))
    shapes = ", ".join(f"{n}{list(a.shape)}" for n, a in model.items())
    print(f"task {args.task}: v{version} stored ({shapes})")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from serialization import SigningKey

    out: Path = args.out
    private, public = out / _KEY_FILE, out / _PUBLIC_FILE
    if private.exists() and not args.force:
        return _fail(f"{private} exists (use --force to overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(key.to_pem())
    public.write_bytes(key.verify_key.to_pem())
    print(f"key {key.key_id}: {private} (secret, 0600), {public} (give to devices)")
    return 0


def _status(args: argparse.Namespace) -> int:
    from aggregator.admin import task_status
    from aggregator.errors import AggregatorError

    try:
        config = _load(args)
        names = args.task or [t.name for t in config.tasks]
        if not names:
            return _fail("no task given (--task) or configured")
        statuses = asyncio.run(task_status(config, names))
    except (AggregatorError, OSError, ValueError) as exc:
        return _fail(str(exc))
    report = {
        name: None
        if s is None
        else {
            "version": s.version,
            "updates_total": s.updates_total,
            "pending": s.pending,
            "dedupe_ids": s.dedupe_ids,
            "devices": s.devices,
            "leader": s.leader,
            "committed_at": s.committed_at,
            "history": list(s.history),
        }
        for name, s in statuses.items()
    }
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    for name, entry in report.items():
        if entry is None:
            print(f"{name}: not initialised")
            continue
        print(
            f"{name}: v{entry['version']}, {entry['updates_total']} updates folded, "
            f"{entry['pending']} pending, {entry['devices']} devices, "
            f"leader {entry['leader'] or '-'}, history {entry['history']}"
        )
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from aggregator.admin import publish_release, rollback_task
    from aggregator.errors import AggregatorError
    from serialization import ModelRelease

    try:
        config = _load(args)
        key = _signing_key(config)
        payload = asyncio.run(rollback_task(config, key, args.task, args.to))
    except (AggregatorError, OSError, ValueError) as exc:
        return _fail(str(exc))
    version = ModelRelease.decode(payload, key.verify_key).version
    print(f"task {args.task}: v{version} committed with the weights of v{args.to}")
    if args.publish:
        try:
            asyncio.run(publish_release(config, args.task, payload))
        except Exception as exc:
            print(f"warning: could not publish ({exc}); the running leader will", file=sys.stderr)
    return 0
