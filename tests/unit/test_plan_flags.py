"""Every boolean flag of the plan table means something: ``PLAN_FLAGS`` (domain/plans.py) says
it gates a feature, and then a test shows the refusal without it and code reads it, or that
the feature is not offered yet, and then nothing reads it. A new flag without a decision fails
here, and so does a "not offered" flag that something starts to gate, or a README that says
otherwise."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from api.schemas import PlanView
from domain.plans import PLAN_FLAGS, PLANS, FlagStatus, Plan, PlanType
from domain.providers import MC_PER_USD, charge_mc_for, hold_mc_for
from domain.units import MC_PER_CREDIT

ROOT = Path(__file__).resolve().parents[2]
THIS = Path(__file__).resolve()
# Where a feature is gated: the code that serves users (not the plan table, the read models
# that copy it or the views that show it).
GATING_CODE = ("api", "domain", "workflows", "gpu_consumer")
NOT_GATING = {ROOT / "domain" / "plans.py", ROOT / "api" / "schemas.py"}

GATED = sorted(n for n, f in PLAN_FLAGS.items() if f.status is FlagStatus.GATES)
NOT_OFFERED = sorted(n for n, f in PLAN_FLAGS.items() if f.status is FlagStatus.NOT_OFFERED)


def _flags_of(fields: dict[str, object]) -> set[str]:
    return {name for name, kind in fields.items() if kind in (bool, "bool")}


def test_every_flag_of_the_plan_table_has_a_decision() -> None:
    flags = _flags_of({f.name: f.type for f in dataclasses.fields(Plan)})
    assert flags == set(PLAN_FLAGS), "decide each flag in PLAN_FLAGS: gates, or not offered"
    assert all(f.meaning.strip() for f in PLAN_FLAGS.values())


def test_plans_and_profiles_show_each_flag_with_its_meaning() -> None:
    view = PlanView.model_validate(PLANS["pro"])
    shown = {f.flag: f for f in view.flags}
    assert set(shown) == set(PLAN_FLAGS)
    for name, decision in PLAN_FLAGS.items():
        assert shown[name].enabled is getattr(PLANS["pro"], name)
        assert (shown[name].status, shown[name].meaning) == (decision.status, decision.meaning)
    assert "flags" in PlanView.model_json_schema(mode="serialization")["properties"]


def _test_names() -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if path == THIS:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        functions = (
            n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        )
        found += [(path, f.name) for f in functions if f.name.startswith("test_")]
    return found


def _flag_reads(flag: str) -> list[str]:
    """Where code that serves users reads ``<plan>.<flag>``."""
    reads = []
    for package in GATING_CODE:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path in NOT_GATING:
                continue
            tree = ast.parse(path.read_text(), filename=str(path))
            reads += [
                f"{path.relative_to(ROOT)}:{node.lineno}"
                for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and node.attr == flag
            ]
    return reads


@pytest.mark.parametrize("flag", GATED)
def test_a_gating_flag_is_read_and_its_refusal_tested(flag: str) -> None:
    assert _flag_reads(flag), f"{flag} is declared to gate a feature, but no code reads it"
    # The refusal's test is named for it: test_..._without_<flag>_...
    refusals = [f"{p.relative_to(ROOT)}::{n}" for p, n in _test_names() if f"without_{flag}" in n]
    assert refusals, f"no test named test_*without_{flag}* shows the refusal without {flag}"


@pytest.mark.parametrize("flag", NOT_OFFERED)
def test_a_flag_not_offered_gates_nothing(flag: str) -> None:
    reads = _flag_reads(flag)
    assert reads == [], f"{flag} is read in {reads}: it gates something, so say so in PLAN_FLAGS"


def test_the_readme_table_says_what_plan_flags_says() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Plan flags", 1)[1].split("\n#", 1)[0]
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| (.+?) \|$", section, flags=re.M))
    assert set(rows) == set(PLAN_FLAGS)
    for name, decision in PLAN_FLAGS.items():
        offered = "not offered yet" not in rows[name].lower()
        assert offered is (decision.status is FlagStatus.GATES), f"README row of {name}"


# ------------------------------------------------------- third_party_api: the billing rule


def test_the_provider_rate_is_what_every_paid_plan_sells_a_dollar_for() -> None:
    for plan in PLANS.values():
        if plan.type is PlanType.PAID and plan.usd_per_month is not None:
            assert plan.credits_per_month is not None
            assert plan.credits_per_month * MC_PER_CREDIT == plan.usd_per_month * MC_PER_USD


def test_a_provider_job_is_held_at_its_quote_and_charged_its_reported_cost_capped() -> None:
    hold = hold_mc_for(40_000)  # a $0.04 quote, marked up 30%: 0.052 USD = 10.4 credits
    assert hold == 10_400
    assert charge_mc_for(30_000, hold) == 7_800  # reported less than quoted: that, marked up
    assert charge_mc_for(90_000, hold) == hold  # reported more: never past the hold
    assert charge_mc_for(0, hold) == 0
    assert charge_mc_for(3, hold) == 0  # 0.78 mc, rounded down in the user's favour
    assert hold_mc_for(0) == 1  # a hold is never empty
