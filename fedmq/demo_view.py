"""The demo's terminal view: a live rich table on a terminal, a line every 5 s otherwise."""

from __future__ import annotations

from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live
from rich.table import Table

if TYPE_CHECKING:
    from fedmq.demo_fleet import FleetStats
    from fedmq.demo_report import ReleasePoint

__all__ = ["DemoView"]

_PLAIN_EVERY = 5.0
_RATE_WINDOW = 5.0


class DemoView:
    """Shows model version, accuracy, updates/s, devices online, bytes and rejections."""

    def __init__(self, *, devices: int, duration: float, target: float) -> None:
        self._console = Console()
        self._devices = devices
        self._duration = duration
        self._target = target
        self._live: Live | None = None
        self._accepted: deque[tuple[float, int]] = deque()
        self._next_line = 0.0

    def __enter__(self) -> DemoView:
        if self._console.is_terminal:
            self._live = Live(console=self._console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, traceback)

    def _rate(self, elapsed: float, accepted: int) -> float:
        self._accepted.append((elapsed, accepted))
        while self._accepted and self._accepted[0][0] < elapsed - _RATE_WINDOW:
            self._accepted.popleft()
        first_time, first_count = self._accepted[0]
        span = elapsed - first_time
        return (accepted - first_count) / span if span > 0 else 0.0

    def update(
        self, elapsed: float, stats: FleetStats, releases: list[ReleasePoint], refused: int
    ) -> None:
        """Redraw (terminal) or print a status line (every 5 s elsewhere)."""
        rate = self._rate(elapsed, stats.receipts_accepted)
        latest = releases[-1] if releases else None
        accuracy = f"{latest.accuracy:.1%}" if latest else "-"
        version = str(latest.version) if latest else "-"
        if self._live is None:
            if elapsed >= self._next_line:
                self._next_line = elapsed + _PLAIN_EVERY
                print(
                    f"[{elapsed:6.1f}s] model v{version} accuracy {accuracy} | "
                    f"{rate:5.1f} updates/s | online {stats.online}/{stats.devices} | "
                    f"up {stats.bytes_up / 1e6:.2f} MB down {stats.bytes_down / 1e6:.2f} MB | "
                    f"rejected {stats.receipts_rejected}",
                    flush=True,
                )
            return
        table = Table(title="fedmq demo", show_header=False, min_width=60)
        table.add_column("what", style="bold")
        table.add_column("value")
        table.add_row("model version", version)
        table.add_row("test accuracy", f"{accuracy} (target {self._target:.0%})")
        table.add_row("updates accepted", f"{stats.receipts_accepted} ({rate:.1f}/s)")
        table.add_row("devices online", f"{stats.online} / {stats.devices}")
        table.add_row("samples observed", f"{stats.samples_observed} / {stats.samples_total}")
        table.add_row(
            "bytes up / down", f"{stats.bytes_up / 1e6:.2f} MB / {stats.bytes_down / 1e6:.2f} MB"
        )
        table.add_row("rejected updates", str(stats.receipts_rejected))
        table.add_row("releases refused", str(refused))
        table.add_row("link outages", str(stats.outages))
        table.add_row("time", f"{elapsed:.0f} s of at most {self._duration:.0f} s")
        self._live.update(table)
