"""`pinksea ledger ...`: the auditor's tools. They read the event store, not the read models;
``--database-url`` points any of them at a read replica."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from audit.store import ACCOUNT_EVENTS, StoredDomainEvent, count_events, stream_events
from cli.app import LEDGER_PANEL, app
from domain import ids
from domain.units import format_credits
from infra.settings import get_settings

ledger_app = typer.Typer(
    help="Ledger tools for auditors and billing analysts.", no_args_is_help=True
)
app.add_typer(ledger_app, name="ledger", rich_help_panel=LEDGER_PANEL)
console = Console(stderr=True)

DatabaseUrl = typer.Option(None, "--database-url", help="Read from this database (e.g. a replica).")
From = typer.Option(None, "--from", help="Start of the window (ISO time, inclusive).")
To = typer.Option(None, "--to", help="End of the window (ISO time, exclusive).")


def _when(value: str | None) -> datetime | None:
    if value is None:
        return None
    t = datetime.fromisoformat(value)
    if t.tzinfo is None:
        raise typer.BadParameter(f"{value}: give a time zone, e.g. {value}+00:00")
    return t


async def _connect(database_url: str | None) -> asyncpg.Connection:
    return await asyncpg.connect(database_url or get_settings().effective_read_database_url)


async def _with_progress(
    conn: asyncpg.Connection, events: AsyncIterator[StoredDomainEvent], topics: tuple[str, ...]
) -> AsyncIterator[StoredDomainEvent]:
    """Pass events through while showing a progress bar with events/s on stderr."""
    total = await count_events(conn, topics)
    with Progress(
        TextColumn("replaying"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>9.0f} events/s"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("events", total=total, rate=0.0)
        started = asyncio.get_running_loop().time()
        done = 0
        async for stored in events:
            yield stored
            done += 1
            if done % 2000 == 0:
                elapsed = max(asyncio.get_running_loop().time() - started, 1e-9)
                progress.update(task, completed=done, rate=done / elapsed)


@ledger_app.command()
def statement(
    user: str,
    start: str | None = From,
    end: str | None = To,
    as_of: str | None = typer.Option(
        None, "--as-of", help="Replay only what had happened by then."
    ),
    database_url: str | None = DatabaseUrl,
) -> None:
    """Opening balance, every movement with running balances, closing balance."""
    from audit.statement import build_statement

    async def main() -> None:
        conn = await _connect(database_url)
        try:
            events = [
                e
                async for e in stream_events(
                    conn, topics=(ACCOUNT_EVENTS,), originator_id=ids.account_id(user)
                )
            ]
        finally:
            await conn.close()
        if not events:
            console.print(f"[red]no credit account for user {user}[/red]")
            raise typer.Exit(1)
        s = build_statement(user, events, start=_when(start), end=_when(end), as_of=_when(as_of))
        table = Table(title=f"statement of {user} (credits)")
        columns = ("amount", "held change", "available after", "held after")
        for col in ("time (UTC)", "kind", "job", *columns):
            table.add_column(col, justify="right" if col != "kind" else "left")
        table.add_row(
            "",
            "opening",
            "",
            "",
            "",
            format_credits(s.opening_available_mc),
            format_credits(s.opening_held_mc),
        )
        for line in s.lines:
            table.add_row(
                line.occurred_at.strftime("%m-%d %H:%M:%S.%f")[:-3],
                line.kind,
                (line.job_id or "")[:8],
                format_credits(line.amount_mc),
                format_credits(line.held_change_mc),
                format_credits(line.available_after_mc),
                format_credits(line.held_after_mc),
            )
        table.add_row(
            "",
            "closing",
            "",
            "",
            "",
            format_credits(s.closing_available_mc),
            format_credits(s.closing_held_mc),
        )
        Console().print(table)

    asyncio.run(main())


@ledger_app.command()
def balance(
    as_of: str | None = typer.Option(
        None, "--as-of", help="Replay only what had happened by then."
    ),
    user: str | None = typer.Option(None, help="One user (default: every user)."),
    all_users: bool = typer.Option(False, "--all-users", help="Every user."),
    database_url: str | None = DatabaseUrl,
) -> None:
    """Available and held credit of one or every user at an instant."""
    from audit.balances import balances_as_of

    if not user and not all_users:
        raise typer.BadParameter("give --user USER or --all-users")

    async def main() -> None:
        conn = await _connect(database_url)
        try:
            account = ids.account_id(user) if user else None
            events = stream_events(conn, topics=(ACCOUNT_EVENTS,), originator_id=account)
            result = await balances_as_of(
                _with_progress(conn, events, (ACCOUNT_EVENTS,)), _when(as_of)
            )
        finally:
            await conn.close()
        table = Table(title=f"balances as of {as_of or 'now'}")
        for col in ("user", "available", "held", "available_mc", "held_mc"):
            table.add_column(col)
        for b in sorted(result.values(), key=lambda b: b.user_id):
            table.add_row(
                b.user_id,
                format_credits(b.available_mc),
                format_credits(b.held_mc),
                str(b.available_mc),
                str(b.held_mc),
            )
        Console().print(table)

    asyncio.run(main())


@ledger_app.command()
def export(
    start: str | None = From,
    end: str | None = To,
    fmt: str = typer.Option("csv", "--format", help="csv, parquet or jsonl."),
    out: Path = typer.Option(None, "--out", help="File to write (default: standard output)."),
    database_url: str | None = DatabaseUrl,
) -> None:
    """One row per posting, streamed: memory stays flat at any size."""
    from audit.export import posting_rows, write_export

    async def main() -> None:
        conn = await _connect(database_url)
        try:
            events = _with_progress(
                conn, stream_events(conn, topics=(ACCOUNT_EVENTS,)), (ACCOUNT_EVENTS,)
            )
            rows = posting_rows(events, _when(start), _when(end))
            count = await write_export(rows, fmt, out if out is not None else sys.stdout)
        finally:
            await conn.close()
        console.print(f"exported {count} postings")

    asyncio.run(main())


@ledger_app.command()
def report(
    start: str | None = From,
    end: str | None = To,
    plot: Path = typer.Option(None, "--plot", help="Also draw the figures into this PNG."),
    database_url: str | None = DatabaseUrl,
) -> None:
    """Credits granted / consumed / expired per day, GPU-seconds per tier, and hold tightness
    per tier (charged / hold p50 and p95, runs stopped at their budget)."""
    from audit.report import HoldReport, daily_report, plot_report

    async def main() -> None:
        conn = await _connect(database_url)
        try:
            events = _with_progress(
                conn, stream_events(conn, topics=(ACCOUNT_EVENTS,)), (ACCOUNT_EVENTS,)
            )
            holds = HoldReport()
            days = await daily_report(events, _when(start), _when(end), holds)
        finally:
            await conn.close()
        tiers = sorted({t for d in days.values() for t in d.gpu_ms_by_tier})
        table = Table(title="credits and GPU time per day")
        for col in ("day", "granted", "consumed", "expired", *(f"GPU-s {t}" for t in tiers)):
            table.add_column(col, justify="right")
        for day, f in days.items():
            table.add_row(
                day.isoformat(),
                format_credits(f.granted_mc),
                format_credits(f.consumed_mc),
                format_credits(f.expired_mc),
                *(format_credits(f.gpu_ms_by_tier.get(t, 0)) for t in tiers),
            )
        Console().print(table)
        tightness = Table(title="hold tightness per tier (charged / hold of settled holds)")
        for col in ("tier", "settled", "p50", "p95", "stopped at budget"):
            tightness.add_column(col, justify="right")
        for tier, h in sorted(holds.tiers.items()):
            tightness.add_row(
                tier,
                str(h.settled),
                f"{h.quantile(0.5):.2f}",
                f"{h.quantile(0.95):.2f}",
                f"{h.stopped_at_budget} ({h.stopped_rate:.1%})",
            )
        Console().print(tightness)
        if plot is not None:
            plot_report(days, plot)
            console.print(f"chart written to {plot}")

    asyncio.run(main())


@ledger_app.command()
def verify(database_url: str | None = DatabaseUrl) -> None:
    """Replay every event, recompute the read models in memory, compare and check invariants.
    Exits 1 on any mismatch, showing the first differing rows."""
    from audit.store import VERIFIED_EVENTS, stream_aggregates
    from audit.verify import verify as run_verify

    topics = VERIFIED_EVENTS

    async def main() -> bool:
        url = database_url or get_settings().effective_read_database_url
        pool = await asyncpg.create_pool(url, min_size=3, max_size=3)
        try:
            async with pool.acquire() as conn:
                events = _with_progress(conn, stream_aggregates(conn, topics=topics), topics)
                report = await run_verify(pool, events)
        finally:
            await pool.close()
        table = Table(title=f"ledger verify: {report.events} events replayed")
        table.add_column("read model")
        table.add_column("rows checked", justify="right")
        for name, n in report.checked.items():
            table.add_row(name, str(n))
        Console().print(table)
        for finding in report.findings:
            Console().print(f"[red]FAIL[/red] {finding.check}: {finding.detail}")
            for row in finding.rows:
                Console().print(f"    {row}")
        if report.ok:
            Console().print("[green]OK[/green]: every invariant holds and every read model matches")
        return report.ok

    if not asyncio.run(main()):
        raise typer.Exit(1)


@ledger_app.command()
def reconcile(
    start: str | None = From,
    end: str | None = To,
    reports: bool = typer.Option(True, help="Also compare with the workers' reports on Kafka."),
    database_url: str | None = DatabaseUrl,
) -> None:
    """Usage records vs ledger debits vs worker reports vs Stripe payments. Exits 1 on any
    discrepancy."""
    from audit.reconcile import reconcile as run_reconcile
    from audit.reconcile import worker_reports
    from audit.store import JOB_EVENTS

    topics = (ACCOUNT_EVENTS, JOB_EVENTS)

    async def main() -> bool:
        settings = get_settings()
        retained = await worker_reports(settings) if reports else None
        conn = await _connect(database_url)
        events_conn = await _connect(database_url)
        try:
            events = _with_progress(events_conn, stream_events(events_conn, topics=topics), topics)
            result = await run_reconcile(conn, events, retained, _when(start), _when(end))
        finally:
            await conn.close()
            await events_conn.close()
        Console().print(
            f"{result.jobs} settled jobs, {result.reports} worker reports, "
            f"{result.invoices} invoices compared"
        )
        if result.discrepancies:
            table = Table(title=f"{len(result.discrepancies)} discrepancies")
            for col in ("subject", "check", "detail"):
                table.add_column(col)
            for d in result.discrepancies:
                table.add_row(d.subject, d.check, d.detail)
            Console().print(table)
            return False
        Console().print("[green]OK[/green]: usage, ledger, worker reports and payments agree")
        return True

    if not asyncio.run(main()):
        raise typer.Exit(1)


SigningKey = typer.Option(
    None,
    "--signing-key",
    help="PEM file of the Ed25519 private key (default: PINKSEA_LEDGER_SIGNING_KEY_PATH).",
)


def _signing_key(path: Path | None) -> Ed25519PrivateKey:
    from audit.chain import load_private_key

    configured = path or get_settings().ledger_signing_key_path
    if configured is None:
        console.print(
            "[red]no signing key[/red]: pass --signing-key or set PINKSEA_LEDGER_SIGNING_KEY_PATH "
            "(`pinksea ledger keygen` makes one)"
        )
        raise typer.Exit(2)
    try:
        return load_private_key(Path(configured).expanduser().read_bytes())
    except (OSError, ValueError) as e:
        console.print(f"[red]cannot read the signing key {configured}[/red]: {e}")
        raise typer.Exit(2) from e


@ledger_app.command()
def keygen(
    out: Path = typer.Argument(..., help="Private key file to write (its public key: OUT.pub)."),
) -> None:
    """Make the Ed25519 key pair that signs seals and receipts (publish OUT.pub)."""
    from cryptography.hazmat.primitives import serialization

    if out.exists():
        console.print(f"[red]{out} exists[/red]: a signing key is never overwritten")
        raise typer.Exit(1)
    key = Ed25519PrivateKey.generate()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    public = out.with_name(out.name + ".pub")
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    Console().print(f"wrote {out} (keep it secret) and {public} (publish it)")


@ledger_app.command()
def seal(
    signing_key: Path | None = SigningKey,
    database_url: str | None = typer.Option(
        None, "--database-url", help="The primary database (a seal is written)."
    ),
    publish: Path | None = typer.Option(
        None, "--publish", help="Also write the seal as SEQ.json into this folder."
    ),
) -> None:
    """Seal the credit events committed since the last seal: their Merkle root, chained to the
    previous seal's, signed. Run it daily; receipts prove their events against seals."""
    from audit.seals import seal as run_seal

    key = _signing_key(signing_key)

    async def main() -> dict[str, Any] | None:
        conn = await asyncpg.connect(database_url or get_settings().database_url)
        try:
            return await run_seal(conn, key, datetime.now(UTC))
        finally:
            await conn.close()

    document = asyncio.run(main())
    if document is None:
        Console().print("nothing to seal: no event since the last seal")
        return
    if publish is not None:
        publish.mkdir(parents=True, exist_ok=True)
        (publish / f"{document['seq']:08d}.json").write_text(json.dumps(document, indent=2) + "\n")
    Console().print(
        f"seal {document['seq']}: positions {document['first_position']}.."
        f"{document['last_position']}, {document['leaf_count']} credit events, "
        f"root {document['root'][:16]}…"
    )


@ledger_app.command()
def receipt(
    job_id: UUID,
    signing_key: Path | None = SigningKey,
    out: Path | None = typer.Option(None, "--out", help="Write here (default: stdout)."),
    database_url: str | None = DatabaseUrl,
) -> None:
    """The signed receipt of a settled job, with its credit events' proofs into the seals."""
    from audit.receipts import ReceiptUnavailable, issue_receipt

    key = _signing_key(signing_key)

    async def main() -> dict[str, Any]:
        conn = await _connect(database_url)
        try:
            return await issue_receipt(conn, job_id, key, datetime.now(UTC))
        finally:
            await conn.close()

    try:
        document = asyncio.run(main())
    except ReceiptUnavailable as e:
        console.print(f"[red]no receipt[/red]: {e}")
        raise typer.Exit(1) from e
    text = json.dumps(document, indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        Console().print(f"wrote the receipt of job {job_id} to {out}")


@ledger_app.command("verify-receipt")
def verify_receipt(
    file: Path = typer.Argument(..., help="A receipt written by `pinksea ledger receipt`."),
    public_key: Path = typer.Option(..., "--public-key", help="The published OUT.pub (PEM)."),
) -> None:
    """Check a receipt offline: signatures, every event's proof into its seal, and that the
    charge it states is the sealed settlement's. Reads nothing else. Exits 1 on any problem."""
    from audit.chain import load_public_key
    from audit.receipts import verify_receipt as run_verify

    try:
        document = json.loads(file.read_text())
        key = load_public_key(public_key.read_bytes())
    except (OSError, ValueError) as e:
        console.print(f"[red]cannot read[/red]: {e}")
        raise typer.Exit(2) from e
    problems = run_verify(document, key) if isinstance(document, dict) else ["not a receipt"]
    for problem in problems:
        Console().print(f"[red]FAIL[/red] {problem}")
    if problems:
        raise typer.Exit(1)
    Console().print(
        f"[green]OK[/green]: job {document['job_id']} charged {document['charged_mc']} mc "
        f"for {document['gpu_ms']} GPU-ms, proven against {len(document['seals'])} seal(s)"
    )
