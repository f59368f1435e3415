"""What a chaos scenario reports: its figures, and each goal with whether it held."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class Goal:
    """One goal of the issue: what it asks, what was measured, and whether it held."""

    name: str
    target: str
    measured: str
    held: bool


@dataclass(kw_only=True)
class ChaosReport:
    """Figures of one scenario run, in the words of the issue."""

    scenario: str
    figures: dict[str, str] = field(default_factory=dict)
    goals: list[Goal] = field(default_factory=list)

    def figure(self, name: str, value: object) -> None:
        """Record a figure (printed in insertion order)."""
        self.figures[name] = value if isinstance(value, str) else f"{value}"

    def goal(self, name: str, target: str, measured: object, held: bool) -> None:
        """Record a goal and whether it held."""
        self.goals.append(Goal(name=name, target=target, measured=f"{measured}", held=held))

    @property
    def failed(self) -> list[Goal]:
        """The goals that did not hold."""
        return [g for g in self.goals if not g.held]

    def render(self) -> str:
        """The figures and goals as an aligned text block."""
        width = max((len(k) for k in [*self.figures, *(g.name for g in self.goals)]), default=0)
        lines = [f"== {self.scenario}"]
        lines += [f"  {name:<{width}}  {value}" for name, value in self.figures.items()]
        for g in self.goals:
            verdict = "held" if g.held else "MISSED"
            lines.append(f"  {g.name:<{width}}  {g.measured}  (goal {g.target}: {verdict})")
        return "\n".join(lines)
