"""The ``fedmq broker`` subcommand: provision accounts and development certificates."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fedmq.broker_files import (
    AccountKind,
    BrokerConfigError,
    ConfigDir,
    InvalidNameError,
)
from fedmq.certificates import (
    DEFAULT_SERVER_NAMES,
    create_ca,
    issue_device_certificate,
    issue_server_certificate,
    load_certified_key,
)
from fedmq.password_file import write_private_file
from serialization.errors import MalformedError
from serialization.topics import validate_identifier

if TYPE_CHECKING:
    from fedmq.cli import Handler, Subparsers

__all__ = ["register"]

logger = logging.getLogger(__name__)

_PLACEHOLDER_HOST = "BROKER_HOST"
_PLACEHOLDER_TASK = "TASK"
_DEVICE_PORT = 8883
_SERVICE_PORT = 1883


class _CommandError(Exception):
    """A refusal the handler reports on stderr with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _fail(message: str, exit_code: int) -> int:
    print(f"fedmq broker: error: {message}", file=sys.stderr)
    return exit_code


def _guarded(command: Callable[[argparse.Namespace], int]) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except InvalidNameError as exc:
            return _fail(str(exc), 2)
        except BrokerConfigError as exc:
            return _fail(str(exc), 1)
        except _CommandError as exc:
            return _fail(str(exc), exc.exit_code)

    return handler


def _config(args: argparse.Namespace) -> ConfigDir:
    try:
        return ConfigDir(args.config_dir)
    except BrokerConfigError as exc:
        raise _CommandError(f"{exc} (choose one with --config-dir)", 2) from exc


def _reload(pid: int | None) -> int:
    """SIGHUP the broker at ``pid`` (after checking it is mosquitto), or remind to do so."""
    if pid is None:
        print(
            "fedmq broker: reload the broker to apply this: kill -HUP <mosquitto pid> "
            "(Docker: docker kill --signal=HUP <container>), or pass --reload-pid",
            file=sys.stderr,
        )
        return 0
    unsent = "the change is saved, but no broker was reloaded"
    comm = Path(f"/proc/{pid}/comm")
    try:
        name = comm.read_text().strip() if Path("/proc/self").exists() else "mosquitto"
        if name != "mosquitto":
            return _fail(f"process {pid} is {name!r}, not mosquitto: {unsent}", 1)
        os.kill(pid, signal.SIGHUP)
    except (FileNotFoundError, ProcessLookupError):
        return _fail(f"there is no process {pid}: {unsent}", 1)
    print(f"fedmq broker: sent SIGHUP to mosquitto (pid {pid})", file=sys.stderr)
    return 0


def _toml(value: str) -> str:
    return json.dumps(value)


def _credentials(args: argparse.Namespace, kind: AccountKind, secret: str) -> str:
    """The account's client settings as TOML (the only place its secret is ever written).

    A device gets a complete ``fedmq device run`` config; a service gets the ``[mqtt]`` table
    of an aggregator.toml; a subscriber gets its connection settings.
    """
    tls = kind is not AccountKind.SERVICE
    port = args.port or (_DEVICE_PORT if tls else _SERVICE_PORT)
    task = getattr(args, "task", None)
    lines = [
        f"# fedmq {kind} credentials for {args.name!r} (`fedmq broker add-{kind}`).",
        "# SECRET: keep this file private (mode 0600) and out of version control.",
    ]
    if args.host == _PLACEHOLDER_HOST or task == _PLACEHOLDER_TASK:
        lines.append("# Replace the placeholders (or pass --host/--task next time).")
    if kind is AccountKind.DEVICE:
        lines += [
            "# Run it with: fedmq device run --config THIS_FILE (see device/README.md).",
            f"device_id = {_toml(args.name)}",
            f"task = {_toml(task or _PLACEHOLDER_TASK)}",
            f"state_dir = {_toml(str(args.state_dir))}",
            f"aggregator_key = {_toml(str(args.aggregator_key))}",
            "",
            "[broker]",
            f"host = {_toml(args.host)}",
            f"port = {port}",
            f"password = {_toml(secret)}",
            'tls_ca = "ca.crt"',
        ]
        return "\n".join(lines) + "\n"
    lines += ["[mqtt]", f"host = {_toml(args.host)}", f"port = {port}"]
    if tls:
        lines += ["tls = true", 'ca_file = "ca.crt"']
    lines += [f"username = {_toml(args.name)}", f"password = {_toml(secret)}"]
    return "\n".join(lines) + "\n"


def _add(kind: AccountKind) -> Handler:
    def command(args: argparse.Namespace) -> int:
        config = _config(args)
        task = getattr(args, "task", None)
        if task is not None:
            try:
                validate_identifier(task, "task")
            except MalformedError as exc:
                raise _CommandError(str(exc), 2) from exc
        out: Path | None = args.out
        if out is not None and not out.parent.is_dir():
            raise _CommandError(f"--out {out}: the directory does not exist", 2)
        if out is not None and out.exists() and not args.rotate:
            raise _CommandError(f"--out {out} exists (--rotate replaces it)", 2)
        secret = config.add(args.name, kind, rotate=args.rotate)
        action = "rotated" if args.rotate else "added"
        logger.info("%s %s %s in %s", kind, args.name, action, config.path)
        text = _credentials(args, kind, secret)
        if out is None:
            sys.stdout.write(text)
        else:
            try:
                write_private_file(out, text)
            except OSError as exc:
                raise _CommandError(
                    f"{kind} {args.name!r} was saved, but {out} could not be written ({exc}): "
                    "run the command again with --rotate"
                ) from exc
            print(f"fedmq broker: credentials for {args.name!r} written to {out}", file=sys.stderr)
        return _reload(args.reload_pid)

    return _guarded(command)


def _remove(kind: AccountKind) -> Handler:
    def command(args: argparse.Namespace) -> int:
        config = _config(args)
        config.remove(args.name, kind)
        logger.info("%s %s removed from %s", kind, args.name, config.path)
        print(f"fedmq broker: {kind} {args.name!r} removed", file=sys.stderr)
        return _reload(args.reload_pid)

    return _guarded(command)


def _list(args: argparse.Namespace) -> int:
    accounts = sorted(_config(args).accounts().values(), key=lambda a: (a.kind, a.name))
    rows = [("NAME", "KIND", "PASSWORD")]
    rows += [(a.name, str(a.kind), "set" if a.has_password else "none") for a in accounts]
    width = max(len(row[0]) for row in rows)
    for name, kind, password in rows:
        print(f"{name:<{width}}  {kind:<10}  {password}")
    return 0


def _dev_ca(args: argparse.Namespace) -> int:
    certs = _config(args).path / "certs"
    if (certs / "ca.key").exists() and not args.force:
        raise _CommandError(
            f"{certs / 'ca.key'} exists; --force replaces the CA, after which every device "
            "certificate must be issued again"
        )
    ca = create_ca()
    ca.write(certs / "ca.crt", certs / "ca.key")
    server = issue_server_certificate(ca, args.names or DEFAULT_SERVER_NAMES, days=args.days)
    server.write(certs / "server.crt", certs / "server.key")
    logger.info("development CA and server certificate written to %s", certs)
    print(f"fedmq broker: wrote ca.crt, ca.key, server.crt, server.key in {certs}", file=sys.stderr)
    return _reload(args.reload_pid)


def _issue_cert(args: argparse.Namespace) -> int:
    config = _config(args)
    config.check_name(args.name, AccountKind.DEVICE)
    certs = config.path / "certs"
    if not (certs / "ca.key").exists():
        raise _CommandError(f"no CA in {certs}: run `fedmq broker dev-ca` first")
    ca = load_certified_key(certs / "ca.crt", certs / "ca.key")
    out_dir: Path = args.out_dir or certs / "devices"
    issued = issue_device_certificate(ca, args.name, days=args.days)
    issued.write(out_dir / f"{args.name}.crt", out_dir / f"{args.name}.key")
    logger.info("certificate for device %s written to %s", args.name, out_dir)
    print(
        f"fedmq broker: wrote {args.name}.crt and {args.name}.key in {out_dir}; give the device "
        f"these and {certs / 'ca.crt'}, then delete the key here",
        file=sys.stderr,
    )
    return 0


def register(subparsers: Subparsers) -> None:
    """Add ``fedmq broker`` and its subcommands."""
    parser = subparsers.add_parser(
        "broker",
        help="provision broker accounts and development certificates",
        description="Edit a Mosquitto config dir (its passwd and acl files) and make "
        "development certificates. Changes apply when the broker gets SIGHUP.",
    )
    parser.add_argument(
        "--config-dir",
        type=Path,
        default=Path("broker_config"),
        metavar="DIR",
        help="directory holding acl and passwd (default: ./broker_config)",
    )
    commands = parser.add_subparsers(dest="broker_command", metavar="COMMAND", required=True)

    reload = argparse.ArgumentParser(add_help=False)
    reload.add_argument(
        "--reload-pid", type=int, metavar="PID", help="send SIGHUP to this mosquitto process"
    )
    credentials = argparse.ArgumentParser(add_help=False)
    credentials.add_argument(
        "--out", type=Path, metavar="FILE", help="write the credentials TOML to FILE (0600)"
    )
    credentials.add_argument("--host", default=_PLACEHOLDER_HOST, help="broker host to put in it")
    credentials.add_argument("--port", type=int, help="broker port (default: 8883, services 1883)")
    credentials.add_argument(
        "--rotate", action="store_true", help="replace the secret (and --out file) of an account"
    )

    for kind, help_text in (
        (AccountKind.DEVICE, "add a device (prints its credentials TOML)"),
        (AccountKind.SERVICE, "add a service account with the aggregator's rights"),
        (AccountKind.SUBSCRIBER, "add a read-only account that receives model releases"),
    ):
        add = commands.add_parser(f"add-{kind}", parents=[credentials, reload], help=help_text)
        add.add_argument("name", metavar="ID" if kind is AccountKind.DEVICE else "NAME")
        if kind is AccountKind.DEVICE:
            add.add_argument("--task", default=_PLACEHOLDER_TASK, help="task to put in it")
            add.add_argument(
                "--state-dir", type=Path, default=Path("/var/lib/fedmq"),
                help="the device's state directory to put in it (default /var/lib/fedmq)",
            )  # fmt: skip
            add.add_argument(
                "--aggregator-key", type=Path, default=Path("aggregator.pub.pem"),
                help="the release verify key (PEM) to put in it (default aggregator.pub.pem)",
            )  # fmt: skip
        add.set_defaults(handler=_add(kind))
        remove = commands.add_parser(f"remove-{kind}", parents=[reload], help=f"revoke a {kind}")
        remove.add_argument("name", metavar="ID" if kind is AccountKind.DEVICE else "NAME")
        remove.set_defaults(handler=_remove(kind))

    commands.add_parser("list", help="list accounts").set_defaults(handler=_guarded(_list))

    dev_ca = commands.add_parser(
        "dev-ca", parents=[reload], help="make a development CA and the broker's certificate"
    )
    dev_ca.add_argument(
        "--name",
        dest="names",
        action="append",
        metavar="HOST",
        help="server host name or address (repeatable; default: localhost, 127.0.0.1, "
        "::1, mosquitto)",
    )
    dev_ca.add_argument(
        "--days", type=int, default=825, help="server certificate validity (default: 825)"
    )
    dev_ca.add_argument("--force", action="store_true", help="replace an existing CA")
    dev_ca.set_defaults(handler=_guarded(_dev_ca))

    issue = commands.add_parser("issue-cert", help="issue a device certificate (CN = ID)")
    issue.add_argument("name", metavar="ID")
    issue.add_argument("--days", type=int, default=365, help="validity (default: 365)")
    issue.add_argument(
        "--out-dir", type=Path, metavar="DIR", help="where to write (default: certs/devices)"
    )
    issue.set_defaults(handler=_guarded(_issue_cert))
