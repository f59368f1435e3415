"""The chaos suite at full size (issue 6): every scenario's figures and whether its goals held.

The same scenarios run in CI at a reduced size (``tests/chaos/``, marker ``chaos``); this
script runs them at the sizes the issue asks for, one after the other, each against its own
Mosquitto, Redis, aggregators and devices in a temporary directory. Exit status 1 if any goal
was missed. ``--reduced`` runs the CI sizes; ``--keep`` keeps the work directories (logs);
naming scenarios runs only those (``crashes-everysec`` runs only when named).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tests.chaos import attacks, byzantine, crashes, hostile_input, power_loss, scale
from tests.chaos.report import ChaosReport

__all__ = ["OPT_IN", "SCENARIOS", "main"]


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """One part of the issue: its runner and its two sizes."""

    run: Callable[[Any, Path], ChaosReport]
    full: object
    reduced: object


SCENARIOS: dict[str, Scenario] = {
    "crashes": Scenario(run=crashes.run, full=crashes.FULL, reduced=crashes.REDUCED),
    "crashes-everysec": Scenario(
        run=crashes.run,
        full=replace(crashes.FULL, appendfsync="everysec"),
        reduced=replace(crashes.REDUCED, appendfsync="everysec"),
    ),
    "power-loss": Scenario(run=power_loss.run, full=power_loss.FULL, reduced=power_loss.REDUCED),
    "hostile-input": Scenario(
        run=hostile_input.run, full=hostile_input.FULL, reduced=hostile_input.REDUCED
    ),
    "attacks": Scenario(run=attacks.run, full=attacks.FULL, reduced=attacks.REDUCED),
    "byzantine": Scenario(run=byzantine.run, full=byzantine.FULL, reduced=byzantine.REDUCED),
    "scale": Scenario(run=scale.run, full=scale.FULL, reduced=scale.REDUCED),
    "two-replicas": Scenario(
        run=scale.run, full=scale.FULL_TWO_REPLICAS, reduced=scale.REDUCED_TWO_REPLICAS
    ),
}


OPT_IN = frozenset({"crashes-everysec"})
"""Not run by default: under ``everysec`` a Redis kill may lose acknowledged writes
(aggregator/README.md), so its goals are not guarantees; run it by name to see the figures."""


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios (all by default) and print their reports."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=", ".join(SCENARIOS))
    parser.add_argument("--reduced", action="store_true", help="the CI sizes")
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    args = parser.parse_args(argv)
    # In-process daemons and aggregators log a WARNING per hostile message they refuse (as
    # they should); the figures count those, so the console shows only errors.
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(levelname)s %(message)s")
    chosen = args.scenarios or [name for name in SCENARIOS if name not in OPT_IN]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    print(f"scenarios: {', '.join(chosen)} ({'reduced' if args.reduced else 'full'} size)")
    reports: list[tuple[str, ChaosReport | BaseException, float]] = []
    for name in chosen:
        scenario = SCENARIOS[name]
        workdir = Path(tempfile.mkdtemp(prefix=f"fedmq-soak-{name}-"))
        began = time.monotonic()
        outcome: ChaosReport | BaseException
        try:
            outcome = scenario.run(scenario.reduced if args.reduced else scenario.full, workdir)
        except Exception as exc:  # a scenario that breaks is a finding, not a reason to stop
            outcome = exc
        elapsed = time.monotonic() - began
        reports.append((name, outcome, elapsed))
        _print(name, outcome, elapsed)
        if args.keep:
            print(f"  work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    missed = [
        name
        for name, outcome, _ in reports
        if not isinstance(outcome, ChaosReport) or outcome.failed
    ]
    print(f"\ngoals missed in: {', '.join(missed)}" if missed else "\nevery goal held")
    return 1 if missed else 0


def _print(name: str, outcome: ChaosReport | BaseException, elapsed: float) -> None:
    if isinstance(outcome, ChaosReport):
        print(outcome.render())
    else:
        print(f"== {name}: the scenario failed: {type(outcome).__name__}: {outcome}")
    print(f"  wall time {elapsed:.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
