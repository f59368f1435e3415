"""The demo's outputs: report.json and accuracy.png."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedmq.demo_fleet import FleetStats

__all__ = ["DemoReport", "ReleasePoint", "write_report"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ReleasePoint:
    """One release as the evaluator saw it, with the fleet's upload total at that moment."""

    version: int
    seconds: float
    accuracy: float
    update_count: int
    payload_bytes: int
    uploaded_bytes: int


@dataclass(kw_only=True)
class DemoReport:
    """Everything report.json holds."""

    config: dict[str, Any]
    servers: dict[str, str]
    target_accuracy: float | None
    reached_target: bool = False
    seconds_to_target: float | None = None
    duration_seconds: float = 0.0
    releases: list[ReleasePoint] = field(default_factory=list)
    totals: FleetStats | None = None
    aggregator_exit: int | None = None

    def to_json(self) -> str:
        """Pretty JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=False)


def write_report(report: DemoReport, out: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``accuracy.png`` into ``out``; return both paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    json_path.write_text(report.to_json() + "\n")
    png_path = out / "accuracy.png"
    _plot(report, png_path)
    return json_path, png_path


def _plot(report: DemoReport, path: Path) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    seconds = [r.seconds for r in report.releases]
    megabytes = [r.uploaded_bytes / 1e6 for r in report.releases]
    accuracy = [100 * r.accuracy for r in report.releases]
    figure, (by_time, by_bytes) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for axes, xs, label in (
        (by_time, seconds, "seconds since start"),
        (by_bytes, megabytes, "MB uploaded by the fleet"),
    ):
        axes.plot(xs, accuracy, marker=".", linewidth=1.2)
        axes.set_xlabel(label)
        axes.grid(alpha=0.3)
        if report.target_accuracy is not None:
            axes.axhline(100 * report.target_accuracy, color="grey", linestyle="--", linewidth=1)
    by_time.set_ylabel("test accuracy of the release (%)")
    devices = report.config.get("devices")
    strategy = report.config.get("strategy")
    figure.suptitle(f"fedmq demo: {devices} devices, {strategy}, digits (Dirichlet 0.5)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
