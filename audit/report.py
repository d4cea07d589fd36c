"""Credits granted, consumed and expired per day, GPU-seconds per tier, and how tight the holds
were per tier (charged / hold, and the runs stopped at their budget), from the store."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from audit.store import StoredDomainEvent
from domain.credits import CreditAccount


@dataclass
class DayFigures:
    granted_mc: int = 0
    consumed_mc: int = 0  # charged, net of refunds
    expired_mc: int = 0
    gpu_ms_by_tier: dict[str, int] = field(default_factory=lambda: defaultdict(int))


@dataclass
class TierHolds:
    """The holds of one tier settled in the report's window."""

    tightness: list[float] = field(default_factory=list)  # charged / hold, per settled hold
    stopped_at_budget: int = 0  # billed GPU time reached the hold's budget

    @property
    def settled(self) -> int:
        return len(self.tightness)

    def quantile(self, q: float) -> float:
        ordered = sorted(self.tightness)
        assert ordered, "no settled holds"
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def stopped_rate(self) -> float:
        return self.stopped_at_budget / self.settled if self.settled else 0.0


@dataclass
class HoldReport:
    tiers: dict[str, TierHolds] = field(default_factory=lambda: defaultdict(TierHolds))
    # Every hold's amount as reserved (CreditsReserved), also before the window: a hold placed
    # before it may settle inside it.
    held_mc: dict[str, int] = field(default_factory=dict)

    def settled(self, ev: CreditAccount.HoldSettled) -> None:
        held = self.held_mc.pop(ev.hold_id, 0)
        if held <= 0:
            return  # reserved before the events read (a partial stream): no ratio to take
        budget_ms = held // ev.rate_mc_per_ms
        tier = self.tiers[ev.tier or "unknown"]
        tier.tightness.append(ev.charged_mc / held)
        tier.stopped_at_budget += ev.gpu_ms >= budget_ms


async def daily_report(
    events: AsyncIterable[StoredDomainEvent],
    start: datetime | None,
    end: datetime | None,
    holds: HoldReport | None = None,
) -> dict[date, DayFigures]:
    """The figures per day; ``holds``, when given, is filled with the window's settled holds."""
    days: dict[date, DayFigures] = defaultdict(DayFigures)
    async for stored in events:
        ev = stored.event
        if holds is not None and isinstance(ev, CreditAccount.CreditsReserved):
            holds.held_mc[ev.hold_id] = ev.amount_mc
        if (start is not None and ev.timestamp < start) or (
            end is not None and ev.timestamp >= end
        ):
            continue
        day = days[ev.timestamp.date()]
        if isinstance(ev, CreditAccount.CreditsGranted) or (
            isinstance(ev, CreditAccount.CreditsAdjusted) and ev.amount_mc > 0
        ):
            day.granted_mc += ev.amount_mc
        elif isinstance(ev, CreditAccount.HoldSettled):
            if holds is not None:
                holds.settled(ev)
            day.consumed_mc += ev.charged_mc
            day.expired_mc += sum(p["expired_mc"] for p in ev.parts)
            day.gpu_ms_by_tier[ev.tier or "unknown"] += ev.gpu_ms
        elif isinstance(ev, CreditAccount.HoldReleased):
            if holds is not None:
                holds.held_mc.pop(ev.hold_id, None)
            day.expired_mc += sum(p["expired_mc"] for p in ev.parts)
        elif isinstance(ev, CreditAccount.LotExpired):
            day.expired_mc += ev.expired_mc
        elif isinstance(ev, CreditAccount.CreditsRefunded):
            day.consumed_mc -= ev.amount_mc
    return dict(sorted(days.items()))


def plot_report(days: dict[date, DayFigures], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to the file
    import matplotlib.pyplot as plt

    x = list(days)
    fig, (credits, gpu) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for label, values in (
        ("granted", [d.granted_mc / 1000 for d in days.values()]),
        ("consumed", [d.consumed_mc / 1000 for d in days.values()]),
        ("expired", [d.expired_mc / 1000 for d in days.values()]),
    ):
        credits.plot(x, values, marker="o", label=label)
    credits.set_ylabel("credits")
    credits.set_title("Credits per day")
    credits.legend()
    tiers = sorted({t for d in days.values() for t in d.gpu_ms_by_tier})
    bottom = [0.0] * len(x)
    for tier in tiers:
        values = [d.gpu_ms_by_tier.get(tier, 0) / 1000 for d in days.values()]
        gpu.bar(x, values, bottom=bottom, label=tier)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    gpu.set_ylabel("GPU-seconds")
    gpu.set_title("GPU-seconds billed per tier")
    if tiers:
        gpu.legend()
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
