"""The ``fedmq`` command line: one parser, one subcommand module per role."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TypeAlias

from fedmq import __version__

__all__ = ["Handler", "Subparsers", "build_parser", "main"]

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler: TypeAlias = Callable[[argparse.Namespace], int]
"""What a subcommand stores with ``set_defaults(handler=...)``; returns the exit code."""


_COMMAND_MODULES = (
    "fedmq.demo",
    "fedmq.device_cli",
    "fedmq.aggregator_cli",
    "fedmq.broker_cli",
    "fedmq.watch_cli",
    "fedmq.bench_cli",
)
"""Each module exposes ``register(subparsers)``; listed in help order."""


def _registrars() -> list[Callable[[Subparsers], None]]:
    return [importlib.import_module(name).register for name in _COMMAND_MODULES]


def build_parser() -> argparse.ArgumentParser:
    """The full ``fedmq`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="fedmq",
        description="Federated learning for sensor fleets over MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"fedmq {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level for this process (default: INFO)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _registrars():
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedmq`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0 if args.command is None else 2
    return handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
