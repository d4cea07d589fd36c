"""External image-model providers (the plan flag ``third_party_api``): the interface a provider
adapter will implement and the billing rule its jobs will follow. **Not offered yet**: no
provider API is reachable from this service's network, so there is no adapter, and no job runs
on one; ``PLAN_FLAGS`` (domain/plans.py) says so and the README's "Plan flags" table with it.

What offering one would take, so that it is a job like any other (the same hold, the same
exactly-once settlement, the same statement line):

1. An adapter in ``gpu_consumer/`` implementing :class:`ImageProvider`, run by a worker that
   consumes its own dispatch topic (a tier per provider), so the scheduler, the reports and the
   settler stay as they are. A provider's key is that worker's secret alone.
2. The hold, at admission: :func:`hold_mc_for` of the provider's *quoted* price for the
   parameters (:meth:`ImageProvider.quote`, from its price list: no network call), not of a
   GPU-time estimate. As with a GPU job, the hold is the most the job can cost.
3. The settlement: :func:`charge_mc_for` of the cost the provider *reports* for the request
   (:attr:`ProviderRun.cost_microusd`), capped at the hold; the rest is released to the same
   lots. A settlement command that takes the charge rather than GPU-ms (``charged_mc`` and the
   provider's request id as its evidence, recorded in the job's events) would sit beside today's.
4. What is not billed, as for GPU jobs: a failed request (the provider's error, a timeout)
   releases the whole hold, whatever the provider charged us; what the provider charges past
   the hold is the platform's.

The money conversion uses the plans' own price: every paid plan sells 200 credits a dollar
(:data:`MC_PER_USD`; ``tests/unit/test_plan_flags.py`` holds the plan table to it), so a
provider cost passed on at :data:`MARKUP_PCT` costs a user what the same dollars of their plan
buy, plus the markup. Integers only: provider costs in micro-USD, charges in millicredits,
rounded down (in the user's favour, as every conversion of money to credits here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from domain.parameters import RunParameters

MICROUSD_PER_USD = 1_000_000
MC_PER_USD = 200_000  # 200 credits a dollar, the price of every paid plan
MARKUP_PCT = 130  # a provider's cost is passed on with 30% for the platform


@dataclass(frozen=True)
class ProviderRun:
    """What a provider answered for one request."""

    request_id: str  # the provider's id of the request: the settlement's evidence
    images_png: tuple[bytes, ...]  # uploaded to S3 like a worker's outputs
    cost_microusd: int  # what the provider reports charging for this request


class ImageProvider(Protocol):
    """An external image-model API (Replicate, fal.ai, a vendor's own), as a worker calls it."""

    name: str  # the provider's key, the tier its dispatches use

    def models(self) -> frozenset[str]:
        """The catalog keys this provider serves (domain/catalog.py entries of its family)."""
        ...

    def quote(self, params: RunParameters) -> int:
        """The most the request can cost, in micro-USD, from the provider's price list (no
        network call): the hold is priced from it, at admission."""
        ...

    def generate(
        self, params: RunParameters, *, idempotency_key: str, deadline_s: float
    ) -> ProviderRun:
        """Run the request; ``idempotency_key`` is the job id and attempt, so a retried
        dispatch never pays twice where the provider honours it. Raises on failure (the hold
        is then released) and past ``deadline_s`` (the job's budget in wall time)."""
        ...

    def cancel(self, request_id: str) -> None:
        """Ask the provider to stop a running request (best effort; what it then reports as
        charged is settled like any other run)."""
        ...


def usd_micros_to_mc(cost_microusd: int) -> int:
    """``cost_microusd`` with the markup, in millicredits, rounded down."""
    assert cost_microusd >= 0, "a provider cost is never negative"
    return cost_microusd * MC_PER_USD * MARKUP_PCT // (MICROUSD_PER_USD * 100)


def hold_mc_for(quote_microusd: int) -> int:
    """The hold of a provider job: its quoted price, marked up (at least 1 mc, as a hold is
    never empty)."""
    return max(1, usd_micros_to_mc(quote_microusd))


def charge_mc_for(reported_microusd: int, hold_mc: int) -> int:
    """What a finished provider job is charged: the reported cost, marked up, never past its
    hold (the rest of the hold is released)."""
    assert hold_mc > 0, "a provider job settles a hold"
    return min(usd_micros_to_mc(reported_microusd), hold_mc)
