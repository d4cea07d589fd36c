"""The dispatch message as a worker reads it: the job's parameters nested, as domain/parameters.py
defines them, and a dispatch of the release before (each parameter at the top) read the same."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from domain.parameters import RunParameters
from infra.messages import Dispatch
from tests.gpu.conftest import make_dispatch


def test_a_dispatch_round_trips_with_its_parameters_nested() -> None:
    dispatch = make_dispatch(scheduler="ddim", negative_prompt="fog", batch_size=2)
    raw = json.loads(dispatch.to_bytes())
    assert raw["parameters"] == dispatch.parameters.model_dump(mode="json")
    assert {"prompt", "steps", "seed"}.isdisjoint(raw)
    assert Dispatch.model_validate_json(dispatch.to_bytes()) == dispatch


def test_a_dispatch_of_the_release_before_reads_the_same() -> None:
    job_id = uuid.uuid4()
    sent = datetime.now(UTC)
    old = {
        "kind": "dispatch",
        "job_id": str(job_id),
        "attempt": 2,
        "worker_id": "w-old",
        "user_id": "user-1",
        "tier": "basic",
        "model": "tiny-sd",
        "prompt": "a lighthouse at dusk",
        "negative_prompt": "",
        "steps": 4,
        "width": 64,
        "height": 64,
        "batch_size": 1,
        "seed": 42,
        "guidance_scale": 7.5,
        "scheduler": None,
        "budget_ms": 60_000,
        "dispatched_at": sent.isoformat(),
    }
    dispatch = Dispatch.model_validate_json(json.dumps(old))
    assert dispatch == Dispatch(
        job_id=job_id,
        attempt=2,
        worker_id="w-old",
        user_id="user-1",
        tier="basic",
        parameters=RunParameters(
            model="tiny-sd", prompt="a lighthouse at dusk", steps=4, width=64, height=64, seed=42
        ),
        budget_ms=60_000,
        dispatched_at=sent,
    )


def test_a_dispatch_runs_with_a_resolved_seed() -> None:
    raw = json.loads(make_dispatch().to_bytes())
    raw["parameters"]["seed"] = None
    with pytest.raises(ValidationError, match=r"parameters\.seed"):
        Dispatch.model_validate_json(json.dumps(raw))
