"""Low-balance e-mail settings on the caller's profile: GET /v1/me shows them, PATCH /v1/me
changes them, and the address is the e-mail claim of the latest sign-in."""

from __future__ import annotations

import pytest

from tests.api.conftest import Kit, problem_type
from workflows.notifier.preferences import get_preferences

pytestmark = pytest.mark.integration


def signed_in(kit: Kit, user: str, email: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {kit.token(user, email=email)}"}


async def test_e_mails_are_on_and_go_to_the_sign_in_address(kit: Kit, user: str) -> None:
    r = await kit.client.get("/v1/me", headers=signed_in(kit, user, f"{user}@example.com"))
    assert r.status_code == 200, r.text
    assert r.json()["low_balance_emails"] is True
    assert r.json()["notification_email"] == f"{user}@example.com"
    # A new address at the next sign-in replaces it; a token without the claim keeps it.
    await kit.client.get("/v1/me", headers=signed_in(kit, user, f"new-{user}@example.com"))
    r = await kit.client.get("/v1/me", headers=kit.auth(user))
    assert r.json()["notification_email"] == f"new-{user}@example.com"


async def test_no_address_claim_means_none_is_known(kit: Kit, user: str) -> None:
    r = await kit.client.get("/v1/me", headers=kit.auth(user))
    assert r.json()["notification_email"] is None
    # An address an e-mail header could not safely carry is never recorded.
    r = await kit.client.get("/v1/me", headers=signed_in(kit, user, "a@b.c,\r\nBcc: x@evil.test"))
    assert r.status_code == 200 and r.json()["notification_email"] is None


async def test_patch_turns_low_balance_e_mails_off_and_on(kit: Kit, user: str) -> None:
    headers = signed_in(kit, user, f"{user}@example.com")
    r = await kit.client.patch("/v1/me", json={"low_balance_emails": False}, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["low_balance_emails"] is False
    assert r.json()["notification_email"] == f"{user}@example.com"
    assert (await kit.client.get("/v1/me", headers=headers)).json()["low_balance_emails"] is False
    prefs = await get_preferences(kit.services.pool, user)
    assert (prefs.low_balance_emails, prefs.email) == (False, f"{user}@example.com")
    r = await kit.client.patch("/v1/me", json={"low_balance_emails": True}, headers=headers)
    assert r.status_code == 200 and r.json()["low_balance_emails"] is True


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"low_balance_emails": "no"}, "low_balance_emails"),  # strict: no strings for booleans
        ({"low_balance_emails": 0}, "low_balance_emails"),
        ({"low_balance_emails": None}, "at least one"),
        ({}, "at least one"),
        ({"low_balance_emails": False, "email": "x@example.com"}, "email"),  # not settable
        ([False], "body"),
    ],
)
async def test_bad_patches_are_422_problems(
    kit: Kit, user: str, body: object, expected: str
) -> None:
    r = await kit.client.patch("/v1/me", json=body, headers=kit.auth(user))
    assert r.status_code == 422, r.text
    assert problem_type(r) == "invalid-request"
    assert expected in r.json()["detail"]
    prefs = await get_preferences(kit.services.pool, user)
    assert prefs.low_balance_emails is True  # nothing changed


async def test_a_patch_that_is_not_json_is_a_problem(kit: Kit, user: str) -> None:
    r = await kit.client.patch(
        "/v1/me",
        content=b"low_balance_emails=false",
        headers={**kit.auth(user), "Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert problem_type(r) == "bad-request"
    assert "not valid JSON" in r.json()["detail"]
