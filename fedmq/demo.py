"""``fedmq demo``: the whole loop on one machine, from an empty temp dir to a report."""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedmq.cli import Subparsers
    from fedmq.demo_fleet import Fleet
    from fedmq.demo_report import DemoReport
    from fedmq.demo_stack import DemoStack, StackChoice
    from fedmq.release_evaluator import ReleaseEvaluator

__all__ = ["TASK", "register"]

logger = logging.getLogger(__name__)

TASK = "digits"
EVALUATOR_ACCOUNT = "evaluator"
_TICK = 0.1


def register(subparsers: Subparsers) -> None:
    """Add ``demo``."""
    parser = subparsers.add_parser(
        "demo",
        help="run the whole loop here: broker, Redis, aggregator, device fleet, evaluator",
        description="Starts a broker (Mosquitto from PATH, else an embedded amqtt broker "
        "speaking MQTT 3.1.1), Redis, one aggregator and N device daemons in a temp "
        "dir, feeds each device its share of the digits data over time, and writes "
        "report.json and accuracy.png. Exits 0 once a release reaches --target-accuracy.",
    )
    parser.add_argument("--devices", type=int, default=20, help="device daemons (default 20)")
    parser.add_argument("--duration", type=float, default=180.0, help="max seconds (180)")
    parser.add_argument("--target-accuracy", type=float, default=0.92, help="stop here (0.92)")
    parser.add_argument("--out", type=Path, default=Path("fedmq-demo"), help="report directory")
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument(
        "--broker", choices=["auto", "mosquitto", "embedded"], default="auto",
        help="auto (default): mosquitto from PATH if present, else the embedded amqtt broker",
    )  # fmt: skip
    parser.add_argument("--strategy", choices=["fedbuff", "fedavg"], default="fedbuff")
    parser.add_argument("--buffer-size", type=int, default=5, help="FedBuff K (5)")
    parser.add_argument(
        "--observe-seconds", type=float, default=30.0,
        help="a median-speed device observes all its data in this time (30)",
    )  # fmt: skip
    parser.add_argument(
        "--outages-per-minute", type=float, default=1.0,
        help="mean link losses per device per minute (1.0)",
    )  # fmt: skip
    parser.add_argument("--outage-seconds", type=float, default=8.0, help="mean outage (8 s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-workdir", action="store_true", help="leave the temp dir")
    parser.add_argument("--verbose", action="store_true", help="show the devices' INFO logs")
    parser.set_defaults(handler=run_demo)


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; 0 when the target accuracy was reached, 1 otherwise, 130 on Ctrl-C."""
    from fedmq.demo_stack import choose_servers
    from fedmq.local_servers import ServerStartError

    try:
        choice = choose_servers(args.redis_url, args.broker)
    except ServerStartError as exc:
        print(f"fedmq demo: {exc}")
        return 1
    if not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)
    print(f"broker: {choice.broker} ({choice.broker_reason})")
    print(f"redis:  {choice.redis} ({choice.redis_reason})")
    workdir = Path(tempfile.mkdtemp(prefix="fedmq-demo-"))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run_in(workdir, args, choice)
    except KeyboardInterrupt:
        print("interrupted: stopping everything")
        return 130
    except ServerStartError as exc:
        print(f"fedmq demo: {exc}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        if args.keep_workdir:
            print(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run_in(workdir: Path, args: argparse.Namespace, choice: StackChoice) -> int:
    from fedmq.demo_fleet import Fleet, FleetSettings, device_names
    from fedmq.demo_report import DemoReport, write_report
    from fedmq.demo_stack import start_stack
    from fedmq.digits import dirichlet_partition, load_digits_split
    from fedmq.release_evaluator import ReleaseEvaluator

    split = load_digits_split()
    shares = dirichlet_partition(split.y_train, args.devices, seed=args.seed)
    names = device_names(args.devices)
    settings = FleetSettings(
        observe_seconds=args.observe_seconds,
        outages_per_minute=args.outages_per_minute,
        outage_seconds=args.outage_seconds,
        seed=args.seed,
    )
    report = DemoReport(
        config={
            "devices": args.devices, "strategy": args.strategy, "buffer_size": args.buffer_size,
            "duration": args.duration, "observe_seconds": args.observe_seconds,
            "outages_per_minute": args.outages_per_minute, "outage_seconds": args.outage_seconds,
            "seed": args.seed, "training": asdict(settings.training), "codec": settings.codec.name,
            "data": "sklearn digits, 80/20 stratified split, Dirichlet(0.5) over devices",
        },
        servers={"broker": choice.broker, "broker_reason": choice.broker_reason,
                 "mqtt_version": choice.mqtt_version,
                 "redis": choice.redis, "redis_reason": choice.redis_reason},
        target_accuracy=args.target_accuracy,
    )  # fmt: skip
    stack = start_stack(
        workdir, choice, accounts=[*names, EVALUATOR_ACCOUNT], task=TASK,
        strategy=args.strategy, buffer_size=args.buffer_size,
    )  # fmt: skip
    evaluator: ReleaseEvaluator | None = None
    fleet: Fleet | None = None
    try:
        stack.run_admin("init", "--task", TASK, "--model", "softmax",
                        "--features", "64", "--classes", "10")  # fmt: skip
        stack.start_aggregator()
        evaluator = ReleaseEvaluator(
            host="127.0.0.1", port=stack.broker.port, username=EVALUATOR_ACCOUNT,
            password=stack.passwords[EVALUATOR_ACCOUNT], task=TASK,
            verify_key=stack.signing_key.verify_key, x=split.x_test, y=split.y_test,
            mqtt_version=stack.mqtt_version,
        )  # fmt: skip
        evaluator.start()
        fleet = Fleet(
            names=names, shares=[(split.x_train[i], split.y_train[i]) for i in shares],
            passwords=stack.passwords, broker_port=stack.broker.port,
            mqtt_version=stack.mqtt_version, task=TASK,
            verify_key_path=stack.verify_key_path, state_root=workdir / "devices",
            settings=settings,
        )  # fmt: skip
        fleet.start()
        _loop(args, stack, fleet, evaluator, report)
    finally:
        if fleet is not None:
            report.totals = fleet.stats()
            fleet.close()
        if evaluator is not None:
            evaluator.stop()
        stack.close()
        if stack.aggregator is not None:
            report.aggregator_exit = stack.aggregator.returncode
    json_path, png_path = write_report(report, args.out)
    print(f"wrote {json_path} and {png_path}")
    return 0 if report.reached_target else 1


def _loop(
    args: argparse.Namespace,
    stack: DemoStack,
    fleet: Fleet,
    evaluator: ReleaseEvaluator,
    report: DemoReport,
) -> None:
    from fedmq.demo_report import ReleasePoint
    from fedmq.demo_view import DemoView

    started = time.monotonic()
    seen = 0
    with DemoView(devices=args.devices, duration=args.duration,
                  target=args.target_accuracy) as view:  # fmt: skip
        while True:
            now = time.monotonic()
            elapsed = now - started
            fleet.tick(now, _TICK)
            stats = fleet.stats()
            for release in evaluator.releases[seen:]:
                report.releases.append(
                    ReleasePoint(
                        version=release.version, seconds=round(release.received_at, 3),
                        accuracy=release.accuracy, update_count=release.update_count,
                        payload_bytes=release.payload_bytes, uploaded_bytes=stats.bytes_up,
                    )
                )  # fmt: skip
                if not report.reached_target and release.accuracy >= args.target_accuracy:
                    report.reached_target = True
                    report.seconds_to_target = round(release.received_at, 3)
            seen = len(report.releases)
            view.update(elapsed, stats, report.releases, evaluator.refused)
            if stack.aggregator is not None and stack.aggregator.poll() is not None:
                print(f"the aggregator exited with {stack.aggregator.returncode}; see its log")
                break
            if report.reached_target or elapsed >= args.duration:
                break
            time.sleep(max(0.0, _TICK - (time.monotonic() - now)))
    report.duration_seconds = round(time.monotonic() - started, 3)
    outcome = "reached" if report.reached_target else "did not reach"
    print(
        f"{outcome} {args.target_accuracy:.0%} test accuracy"
        + (f" after {report.seconds_to_target:.1f} s" if report.seconds_to_target else "")
        + f"; {len(report.releases)} releases in {report.duration_seconds:.1f} s"
    )
