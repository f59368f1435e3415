"""``fedmq bench learning`` (a) and (c): sync FedAvg through the real system, checked; codecs."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from device.config import TrainingSettings
from device.models import ModelSpec, Params, accuracy
from fedmq.bench_system import BenchError, BenchSystem
from fedmq.demo_fleet import device_names
from fedmq.digits import DigitsSplit
from fedmq.reference_fedavg import LocalTraining, reference_fedavg
from serialization import Codec

__all__ = [
    "CodecResult",
    "Comparison",
    "SyncRun",
    "compare_with_reference",
    "max_abs_difference",
    "run_codecs",
    "run_sync_fedavg",
]

logger = logging.getLogger(__name__)

_ROUND_TIMEOUT = 60.0


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class SyncRun:
    """Sync FedAvg through the real system: the global model after each round."""

    params: list[Params]
    accuracies: list[float]
    seconds: float
    """From starting the daemons to the release after the last round."""
    bytes_up: int
    """Payload bytes of every update publish of rounds 1..R (base versions 1..R) that a
    non-shared subscriber to the update topics received, resends included."""
    tensor_bytes: int
    """Of which the encoded tensors (values, indices, scales)."""
    updates: int
    """How many publishes those were (N * R when nothing was resent)."""


def run_sync_fedavg(
    split: DigitsSplit,
    shares: Sequence[NDArray[np.intp]],
    *,
    rounds: int,
    spec: ModelSpec,
    initial: Params,
    codec: Codec | None = None,
    training: LocalTraining | None = None,
) -> SyncRun:
    """Mosquitto + Redis + ``fedmq aggregator run`` (FedAvg, cohort N, no deadline) + N
    daemons (trigger ``model``, seed k) holding their shares in index order; R rounds."""
    codec = codec if codec is not None else Codec()
    training = training if training is not None else LocalTraining()
    names = device_names(len(shares))
    expected = len(shares) * rounds
    with BenchSystem(devices=names, strategy="fedavg", buffer_size=len(shares)) as system:
        system.init_model(spec, initial)
        system.start_aggregator()
        system.wait_for_version(1, _ROUND_TIMEOUT)
        for k, (name, idx) in enumerate(zip(names, shares, strict=True)):
            settings = TrainingSettings(
                epochs=training.epochs,
                batch_size=training.batch_size,
                lr=training.lr,
                trigger="model",
                seed=k,
            )
            system.add_daemon(name, settings, codec).observe(split.x_train[idx], split.y_train[idx])
        tap = system.start_tap()
        started = time.monotonic()
        for daemon in system.daemons:
            daemon.start()
        last = system.wait_for_version(rounds + 1, _ROUND_TIMEOUT * rounds)
        seconds = last.at - started
        deadline = time.monotonic() + _ROUND_TIMEOUT
        while len(sent := [u for u in tap.updates if u.base_version <= rounds]) < expected:
            system.check_aggregator()
            if time.monotonic() > deadline:
                raise BenchError(f"the tap saw {len(sent)} of {expected} updates")
            time.sleep(0.05)
        recorder = system.recorder
        by_version = {r.version: r.params for r in recorder.releases} if recorder else {}
    params = [by_version[v] for v in range(2, rounds + 2)]
    return SyncRun(
        params=params,
        accuracies=[accuracy(p, split.x_test, split.y_test) for p in params],
        seconds=seconds,
        bytes_up=sum(u.nbytes for u in sent),
        tensor_bytes=sum(u.tensor_bytes for u in sent),
        updates=len(sent),
    )


def max_abs_difference(a: Params, b: Params) -> float:
    """max |a - b| over every element of every tensor (the names must match)."""
    if set(a) != set(b):
        raise BenchError(f"tensor names differ: {sorted(a)} vs {sorted(b)}")
    return max(float(np.max(np.abs(a[n].astype(np.float64) - b[n]))) for n in a)


@dataclass(frozen=True, kw_only=True, slots=True)
class Comparison:
    """Part (a): the real system next to the plain numpy loop, round by round."""

    max_diffs: list[float]
    system_accuracies: list[float]
    reference_accuracies: list[float]
    system_seconds: float
    reference_seconds: float
    tolerance: float

    @property
    def passed(self) -> bool:
        """Every round within the tolerance and identical accuracy curves."""
        return (
            max(self.max_diffs) <= self.tolerance
            and self.system_accuracies == self.reference_accuracies
        )

    def lines(self) -> list[str]:
        """The human report."""
        out = ["round  max|system - reference|  acc(system)  acc(reference)"]
        for r, (diff, a_sys, a_ref) in enumerate(
            zip(self.max_diffs, self.system_accuracies, self.reference_accuracies, strict=True)
        ):
            out.append(f"{r + 1:5d}  {diff:24.3e}  {a_sys:11.4f}  {a_ref:14.4f}")
        same = self.system_accuracies == self.reference_accuracies
        out.append(
            f"max difference over all rounds {max(self.max_diffs):.3e} (tolerance "
            f"{self.tolerance:g}); accuracy curves identical: {'yes' if same else 'NO'}"
        )
        out.append(
            f"wall time: real system {self.system_seconds:.2f} s, numpy loop "
            f"{self.reference_seconds:.2f} s "
            f"(ratio {self.system_seconds / self.reference_seconds:.1f})"
        )
        out.append(f"(a) {'PASS' if self.passed else 'FAIL'}")
        return out


def compare_with_reference(
    split: DigitsSplit,
    shares: Sequence[NDArray[np.intp]],
    *,
    rounds: int,
    tolerance: float = 1e-5,
) -> Comparison:
    """Part (a): softmax regression, zero init, sync FedAvg over ``shares`` for ``rounds``."""
    spec = ModelSpec(kind="softmax", n_features=split.x_train.shape[1], n_classes=10)
    started = time.perf_counter()
    reference = reference_fedavg(split, shares, rounds=rounds)
    reference_seconds = time.perf_counter() - started
    system = run_sync_fedavg(split, shares, rounds=rounds, spec=spec, initial=spec.init())
    return Comparison(
        max_diffs=[
            max_abs_difference(s, r.params) for s, r in zip(system.params, reference, strict=True)
        ],
        system_accuracies=system.accuracies,
        reference_accuracies=[r.accuracy for r in reference],
        system_seconds=system.seconds,
        reference_seconds=reference_seconds,
        tolerance=tolerance,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class CodecResult:
    """Part (c): one codec's upload volume and final accuracy."""

    codec: str
    bytes_up: int
    tensor_bytes: int
    updates: int
    final_accuracy: float
    seconds: float


def run_codecs(
    split: DigitsSplit,
    shares: Sequence[NDArray[np.intp]],
    *,
    rounds: int,
    hidden: int,
    codecs: Sequence[Codec],
) -> list[CodecResult]:
    """Part (c): the same sync FedAvg run of an MLP (He/Glorot init, seed 0) per codec."""
    spec = ModelSpec(kind="mlp", n_features=split.x_train.shape[1], n_classes=10, hidden=hidden)
    initial = spec.init(np.random.default_rng(0))
    results = []
    for codec in codecs:
        run = run_sync_fedavg(split, shares, rounds=rounds, spec=spec, initial=initial, codec=codec)
        results.append(
            CodecResult(
                codec=codec.name if codec.name != "topk" else f"topk {codec.topk_fraction:.0%}",
                bytes_up=run.bytes_up,
                tensor_bytes=run.tensor_bytes,
                updates=run.updates,
                final_accuracy=run.accuracies[-1],
                seconds=run.seconds,
            )
        )
    return results
