"""A quote (domain/commands/admission.py ``quote``) is what admission then does: the same hold,
the same verdict, for any parameters, plan, balance and queue, and it records nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.catalog import MODELS
from domain.commands.admission import admit, quote
from domain.credits import CreditAccount
from domain.job_lifecycle import RejectionReason
from domain.jobs import GenerationJob, JobParameters, JobStatus
from domain.lots import LotSource
from domain.parameters import UPSCALE_OUTPUT_PIXELS_MAX
from domain.subscription import Subscription

T0 = datetime(2026, 5, 1, tzinfo=UTC)


@st.composite
def job_parameters(draw: st.DrawFn) -> JobParameters:
    spec = MODELS[draw(st.sampled_from(sorted(MODELS)))]
    r = spec.sizes
    side = st.integers(r.min_px // r.multiple + 1, r.max_px // r.multiple).map(
        lambda n: n * r.multiple
    )
    if spec.upscale:  # an upscaler: one pass on its input, the output under the pixel cap
        width = draw(side)
        height = draw(side.filter(lambda h: width * h <= UPSCALE_OUTPUT_PIXELS_MAX))
        return JobParameters(
            model=spec.key, prompt="sharper", steps=1, width=width, height=height,
            init_image=str(UUID(int=1)), scale=spec.upscale,
        )  # fmt: skip
    return JobParameters(
        model=spec.key,
        prompt="a lighthouse",
        steps=draw(st.integers(1, 150)),
        width=draw(side),
        height=draw(side),
        batch_size=draw(st.integers(1, 8)),
        # An inpainting model runs only with its inputs (any ids: admission does not read them).
        **({"init_image": str(UUID(int=1)), "mask": str(UUID(int=2))} if spec.inpainting else {}),
    )


@settings(max_examples=60, deadline=None)
@given(
    params=job_parameters(),
    plan=st.sampled_from(["trial", "starter", "pro", "studio", "tester"]),
    balance_mc=st.one_of(st.integers(1, 100_000), st.integers(10**8, 10**10)),
    open_jobs=st.integers(0, 12),
    storage=st.integers(0, 9).map(lambda n: 10**15 if n == 0 else 0),  # 1 in 10 over quota
)
def test_admission_does_what_the_quote_said(
    params: JobParameters, plan: str, balance_mc: int, open_jobs: int, storage: int
) -> None:
    sub = Subscription.start_trial("u", T0)
    if plan != "trial":
        sub.change_plan(to_plan=plan, actor="admin", reason="test", at=T0)
    account = CreditAccount(user_id="u", timestamp=T0)
    account.grant(
        lot_id="l1",
        source=LotSource.SUBSCRIPTION,
        amount_mc=balance_mc + open_jobs * 1000,
        valid_from=T0,
        valid_until=T0 + timedelta(days=30),
        reference="l1",
        actor="test",
        reason="test",
        at=T0,
    )
    for i in range(open_jobs):
        account.reserve(hold_id=f"h{i}", job_id=f"j{i}", amount_mc=1000, at=T0)
    version = account.version

    quoted = quote(sub, account, params, storage, T0)
    assert account.version == version  # the quote changed nothing
    assert quoted.available_mc == balance_mc
    assert quoted.affordable == (quoted.hold_mc <= balance_mc)

    if quoted.refusal is None:
        job = GenerationJob.submit(
            user_id="u", idempotency_key="k", params=params, tier=sub.plan.tier.value, at=T0
        )
        assert admit(job, account, quoted, T0) is None
        assert job.status == JobStatus.ACCEPTED.value
        assert (job.hold_mc, job.budget_ms) == (quoted.hold_mc, quoted.budget_ms)
        assert account.available_mc(T0) == balance_mc - quoted.hold_mc
    else:
        # The submission answers the quote's refusal itself, creating no job (nothing to
        # admit, nothing saved: domain/commands/submissions.py); the account is as it was.
        assert quoted.refusal[0].value in {r.value for r in RejectionReason}
        assert account.version == version
