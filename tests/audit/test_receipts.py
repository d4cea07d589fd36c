"""Signed receipts, checked offline against the ledger's sealed hash chain (issue 17, part 6).

What must hold: a receipt of a settled job verifies with nothing but itself and the public key;
changing any figure, any event byte or the key is caught, also when the forger re-signs the
receipt (the money is proven by the sealed events, not by the issuer's signature); the store
changed after a seal refuses to issue; seals chain; the CLI round-trips a receipt file.
"""

from __future__ import annotations

import base64
import copy
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.chain import sign
from audit.receipts import ReceiptUnavailable, issue_receipt, verify_receipt
from audit.seals import all_seals, seal
from domain import ids
from infra.settings import Settings
from read_models.migrate import migrate
from tests.integration.streaming_kit import busy_user, fresh_database, new_app

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 7, 1, tzinfo=UTC)
USER = "receipted"
SETTLED = ids.job_id(USER, f"{USER}-0")
REFUNDED = ids.job_id(USER, f"{USER}-1")
CANCELLED = ids.job_id(USER, f"{USER}-2")
KEY = Ed25519PrivateKey.generate()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[tuple[Settings, asyncpg.Connection]]:
    with fresh_database(database_url) as url:
        settings = Settings(database_url=url)
        app = new_app(settings)
        try:
            busy_user(app, USER, jobs=3)  # settled, settled and refunded, cancelled
        finally:
            app.close()
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
            yield settings, conn
        finally:
            await conn.close()


def _resigned(receipt: dict[str, Any]) -> dict[str, Any]:
    """A forger holding the signing key: the receipt's own signature is valid again."""
    body = {k: v for k, v in receipt.items() if k not in ("signature", "key_id")}
    return sign(body, KEY)


async def test_a_sealed_settled_job_has_a_receipt_that_verifies_offline(
    store: tuple[Settings, asyncpg.Connection],
) -> None:
    _, conn = store
    with pytest.raises(ReceiptUnavailable, match="not sealed yet"):
        await issue_receipt(conn, SETTLED, KEY, NOW)
    sealed = await seal(conn, KEY, NOW)
    assert sealed is not None and sealed["seq"] == 1 and sealed["previous_root"] is None
    receipt = await issue_receipt(conn, SETTLED, KEY, NOW)
    assert verify_receipt(receipt, KEY.public_key()) == []
    assert receipt["user_id"] == USER and receipt["charged_mc"] == receipt["gpu_ms"] == 100
    assert [e["topic"].rsplit(".", 1)[1] for e in receipt["ledger_events"]] == [
        "CreditsReserved",
        "HoldSettled",
    ]
    assert len(receipt["images"]) == 1 and receipt["refunded_mc"] == 0
    refunded = await issue_receipt(conn, REFUNDED, KEY, NOW)
    assert verify_receipt(refunded, KEY.public_key()) == []
    assert refunded["refunded_mc"] == refunded["charged_mc"] > 0
    with pytest.raises(ReceiptUnavailable, match="not settled"):
        await issue_receipt(conn, CANCELLED, KEY, NOW)


async def test_forged_figures_events_and_keys_are_caught(
    store: tuple[Settings, asyncpg.Connection],
) -> None:
    _, conn = store
    await seal(conn, KEY, NOW)
    receipt = await issue_receipt(conn, SETTLED, KEY, NOW)

    cheaper = {**copy.deepcopy(receipt), "charged_mc": 1}
    assert any("signature" in p for p in verify_receipt(cheaper, KEY.public_key()))
    # Re-signed by someone with the key: the sealed settlement still says 100.
    problems = verify_receipt(_resigned(cheaper), KEY.public_key())
    assert problems == ["charged_mc: the receipt says 1, the sealed settlement 100"]

    forged = copy.deepcopy(receipt)
    settled = next(e for e in forged["ledger_events"] if e["topic"].endswith("HoldSettled"))
    state = json.loads(base64.b64decode(settled["state"]))
    state["charged_mc"] = 1
    settled["state"] = base64.b64encode(json.dumps(state).encode()).decode()
    forged["charged_mc"] = 1
    problems = verify_receipt(_resigned(forged), KEY.public_key())
    assert len(problems) == 1 and "not in seal 1" in problems[0], problems

    dropped = copy.deepcopy(receipt)
    dropped["ledger_events"] = [
        e for e in dropped["ledger_events"] if not e["topic"].endswith("HoldSettled")
    ]
    assert "0 settlements" in " ".join(verify_receipt(_resigned(dropped), KEY.public_key()))

    other = Ed25519PrivateKey.generate()
    problems = verify_receipt(receipt, other.public_key())
    assert problems and all("signed by key" in p for p in problems)


async def test_a_store_changed_after_its_seal_issues_no_receipt_and_seals_chain(
    store: tuple[Settings, asyncpg.Connection],
) -> None:
    _, conn = store
    first = await seal(conn, KEY, NOW)
    assert first is not None and await seal(conn, KEY, NOW) is None  # nothing new
    app = new_app(store[0])
    try:
        busy_user(app, "later", jobs=1)
    finally:
        app.close()
    second = await seal(conn, KEY, NOW)
    assert second is not None
    assert second["previous_root"] == first["root"]
    assert second["first_position"] == first["last_position"]
    assert [s["seq"] for s in await all_seals(conn)] == [1, 2]

    # Someone rewrites a settled charge in the store itself.
    await conn.execute(
        "UPDATE pinksea_events SET state = convert_to(replace(convert_from(state, 'UTF8'), "
        "'\"charged_mc\":100', '\"charged_mc\":1'), 'UTF8') "
        "WHERE originator_id = $1 AND topic = 'pinksea:CreditAccount.HoldSettled'",
        ids.account_id(USER),
    )
    with pytest.raises(ReceiptUnavailable, match="no longer matches seal 1"):
        await issue_receipt(conn, SETTLED, KEY, NOW)


async def test_the_cli_seals_issues_and_verifies_a_receipt_file(
    store: tuple[Settings, asyncpg.Connection], tmp_path: Path
) -> None:
    settings, _ = store

    def pinksea(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", "ledger", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )

    key = tmp_path / "ledger.pem"
    assert pinksea("keygen", str(key)).returncode == 0
    assert pinksea("keygen", str(key)).returncode == 1  # never overwritten
    url = ["--database-url", settings.database_url]
    sealed = pinksea("seal", "--signing-key", str(key), "--publish", str(tmp_path / "seals"), *url)
    assert sealed.returncode == 0, sealed.stdout + sealed.stderr
    assert json.loads((tmp_path / "seals" / "00000001.json").read_text())["seq"] == 1
    out = tmp_path / "receipt.json"
    issued = pinksea("receipt", str(SETTLED), "--signing-key", str(key), "--out", str(out), *url)
    assert issued.returncode == 0, issued.stdout + issued.stderr
    checked = pinksea("verify-receipt", str(out), "--public-key", f"{key}.pub")
    assert checked.returncode == 0 and "OK" in checked.stdout, checked.stdout + checked.stderr
    receipt = json.loads(out.read_text())
    out.write_text(json.dumps({**receipt, "gpu_ms": 1}))
    assert pinksea("verify-receipt", str(out), "--public-key", f"{key}.pub").returncode == 1
