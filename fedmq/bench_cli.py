"""``fedmq bench learning``: the learning benchmark of the real system, printed as a report."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedmq.bench_fleet import FleetRun
    from fedmq.bench_learning import CodecResult
    from fedmq.cli import Subparsers
    from fedmq.digits import DigitsSplit

__all__ = ["register", "run_learning"]

logger = logging.getLogger(__name__)


def register(subparsers: Subparsers) -> None:
    """Add ``bench learning``."""
    bench = subparsers.add_parser("bench", help="benchmarks of the real system")
    commands = bench.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    parser = commands.add_parser(
        "learning",
        help="sync FedAvg vs a numpy loop, FedAvg vs FedBuff on a flaky fleet, codecs",
        description="(a) sync FedAvg through Mosquitto, Redis, the aggregator and device "
        "daemons next to the same computation as a plain numpy loop; (b) time to accuracy "
        "of sync FedAvg and FedBuff on the demo's heterogeneous fleet (time compressed by "
        "--time-scale); (c) uploaded bytes and final accuracy per codec with an MLP. "
        "Exit 0 when (a) agrees (or was not run), 1 otherwise or when a run fails.",
    )
    parser.add_argument("--parts", default="abc", help="which parts to run (default abc)")
    parser.add_argument("--devices", type=int, default=10, help="(a), (c): devices (10)")
    parser.add_argument("--rounds", type=int, default=30, help="(a), (c): rounds (30)")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="(a): max |diff| (1e-5)")
    parser.add_argument("--fleet-devices", type=int, default=50, help="(b): devices (50)")
    parser.add_argument(
        "--time-scale", type=float, default=0.2,
        help="(b): multiply the demo's durations (observe, outages, deadline) by this (0.2)",
    )  # fmt: skip
    parser.add_argument("--cap-seconds", type=float, default=90.0, help="(b): per strategy (90)")
    parser.add_argument("--fleet-runs", type=int, default=1, help="(b): runs per strategy (1)")
    parser.add_argument(
        "--fedbuff-trigger", choices=["model", "samples"], default="model",
        help="(b): FedBuff devices train once per new release (model, as under FedAvg) or "
        "by the demo's sample rule (samples)",
    )  # fmt: skip
    parser.add_argument(
        "--targets", type=float, nargs="+", default=[0.90, 0.93], help="(b): accuracies"
    )
    parser.add_argument("--hidden", type=int, default=32, help="(c): MLP hidden width (32)")
    parser.add_argument("--seed", type=int, default=0, help="partition and fleet seed (0)")
    parser.add_argument(
        "--verbose", action="store_true",
        help="show INFO logs (default: WARNING, and ERROR for the device daemons, whose "
        "refusals and rejections are counted in the report instead)",
    )  # fmt: skip
    parser.set_defaults(handler=run_learning)


def run_learning(args: argparse.Namespace) -> int:
    """Run the chosen parts and print the report; see ``register`` for the exit code."""
    from fedmq.bench_system import BenchError
    from fedmq.digits import load_digits_split
    from fedmq.local_servers import ServerStartError

    if not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("device").setLevel(logging.ERROR)
    split = load_digits_split()
    print(
        f"digits: {len(split.y_train)} train / {len(split.y_test)} test samples, "
        f"Dirichlet(0.5) partition, seed {args.seed}"
    )
    ok = True
    try:
        if "a" in args.parts:
            ok = _part_a(args, split)
        if "b" in args.parts:
            _part_b(args, split)
        if "c" in args.parts:
            _part_c(args, split)
    except (BenchError, ServerStartError) as exc:
        print(f"fedmq bench learning: {exc}")
        return 1
    return 0 if ok else 1


def _part_a(args: argparse.Namespace, split: DigitsSplit) -> bool:
    from fedmq.bench_learning import compare_with_reference
    from fedmq.digits import dirichlet_partition

    print(
        f"\n(a) sync FedAvg, softmax regression, N={args.devices}, {args.rounds} rounds: "
        "real system (Mosquitto, Redis, aggregator process, device daemons) vs numpy loop"
    )
    shares = dirichlet_partition(split.y_train, args.devices, seed=args.seed)
    comparison = compare_with_reference(split, shares, rounds=args.rounds, tolerance=args.tolerance)
    print("\n".join(comparison.lines()))
    return comparison.passed


def _seconds(value: float | None, cap: float) -> str:
    return f"{value:7.1f}" if value is not None else f">{cap:6.0f}"


def _part_b(args: argparse.Namespace, split: DigitsSplit) -> None:
    from fedmq.bench_fleet import FleetScale, run_fleet
    from fedmq.digits import dirichlet_partition

    scale = FleetScale(
        time_scale=args.time_scale, fedbuff_trigger=args.fedbuff_trigger, seed=args.seed
    )
    print(
        f"\n(b) heterogeneous fleet, N={args.fleet_devices}, softmax: demo fleet with time x"
        f"{scale.time_scale:g} (observe {30 * scale.time_scale:g} s at median speed, "
        f"{1 / scale.time_scale:g} outages/min of mean {8 * scale.time_scale:g} s, FedAvg "
        f"deadline {scale.deadline_s:g} s, FedBuff K={scale.buffer_size}; device trigger: "
        f"FedAvg model, FedBuff {scale.fedbuff_trigger}), "
        f"cap {args.cap_seconds:g} s per strategy"
    )
    shares = dirichlet_partition(split.y_train, args.fleet_devices, seed=args.seed)
    header = "".join(f"  t({t:.0%})" for t in args.targets)
    print(
        f"run strategy {header}  releases  best acc  final acc  accepted  rejected  "
        "refused  outages"
    )
    for index in range(args.fleet_runs):
        runs: list[FleetRun] = []
        for strategy in ("fedavg", "fedbuff"):
            run = run_fleet(
                split, shares, strategy=strategy, scale=scale, targets=args.targets,
                cap_seconds=args.cap_seconds,
            )  # fmt: skip
            runs.append(run)
            times = "".join(
                f"  {_seconds(run.seconds_to[t], args.cap_seconds)}" for t in args.targets
            )
            print(
                f"{index + 1:3d} {run.strategy:8s} {times}  {run.releases:8d}  "
                f"{run.best_accuracy:8.4f}  {run.final_accuracy:9.4f}  "
                f"{run.updates_accepted:8d}  {run.updates_rejected:8d}  "
                f"{run.releases_refused:7d}  {run.outages:7d}"
            )
        fedavg, fedbuff = runs
        for target in args.targets:
            print(f"      {target:.0%}: {_goal_b(fedavg, fedbuff, target, args.cap_seconds)}")


def _goal_b(fedavg: FleetRun, fedbuff: FleetRun, target: float, cap: float) -> str:
    avg, buff = fedavg.seconds_to[target], fedbuff.seconds_to[target]
    if buff is None:
        return "FedBuff did not reach it: goal (FedBuff <= 1/3 of FedAvg's time) MISSED"
    if avg is None:
        return f"FedAvg did not reach it within {cap:g} s: FedBuff/FedAvg < {buff / cap:.2f}; " + (
            "goal met" if buff <= cap / 3 else "goal undecided (raise --cap-seconds)"
        )
    ratio = buff / avg
    return f"FedBuff/FedAvg = {ratio:.2f}: goal <= 0.33 " + ("met" if ratio <= 1 / 3 else "MISSED")


def _part_c(args: argparse.Namespace, split: DigitsSplit) -> None:
    from fedmq.bench_learning import run_codecs
    from fedmq.digits import dirichlet_partition
    from serialization import Codec

    print(
        f"\n(c) codecs: MLP 64-{args.hidden}-10, sync FedAvg through the real system, "
        f"N={args.devices}, {args.rounds} rounds; bytes: every update publish of rounds "
        f"1..{args.rounds} as a non-shared subscriber to the update topics received it "
        "(whole encoded ModelUpdate, resends included)"
    )
    shares = dirichlet_partition(split.y_train, args.devices, seed=args.seed)
    results = run_codecs(
        split, shares, rounds=args.rounds, hidden=args.hidden,
        codecs=[Codec(), Codec(name="float16"), Codec(name="int8"),
                Codec(name="topk", topk_fraction=0.01)],
    )  # fmt: skip
    print(
        "codec       bytes up  updates  bytes/update  % of none  (tensors only)  final acc"
        "  vs none  goal (bytes: whole updates)"
    )
    base = results[0]
    for result in results:
        print(_codec_line(result, base))


def _codec_line(result: CodecResult, base: CodecResult) -> str:
    share = result.bytes_up / base.bytes_up
    tensor_share = result.tensor_bytes / base.tensor_bytes
    points = 100 * (result.final_accuracy - base.final_accuracy)
    goal = ""
    if result.codec == "int8":
        goal = _verdict(share <= 0.26 and points >= -0.5, "<= 26 %, >= -0.5 points")
    elif result.codec.startswith("topk"):
        goal = _verdict(share <= 0.03 and points >= -1.0, "<= 3 %, >= -1 point")
    return (
        f"{result.codec:9s} {result.bytes_up:10d}  {result.updates:7d}  "
        f"{result.bytes_up / result.updates:12.0f}  {100 * share:8.2f}%  "
        f"{100 * tensor_share:13.2f}%  "
        f"{result.final_accuracy:9.4f}  {points:+6.2f}p  {goal}"
    )


def _verdict(met: bool, goal: str) -> str:
    return f"{goal}: {'met' if met else 'MISSED'}"
