"""One chaos run, start to verdict:

1. start the private stack and create the run's database, topics and bucket;
2. start every process (API x2, relay, projections, scheduler, settler, expiry, 2 GPU workers);
3. run the load while the injector works through the seeded fault plan;
4. wait for quiescence, judge (verify, reconcile, acknowledged-vs-ledger, every image in S3);
5. print the summary table; the result is also written as JSON for RELIABILITY.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from rich.console import Console
from rich.table import Table

from chaos.disk import DiskUnavailable, tmpfs
from chaos.faults import Injector, plan_faults
from chaos.images import check_images
from chaos.load import LoadConfig, LoadGenerator
from chaos.outcome import judge, wait_for_quiescence
from chaos.partition import ChaosPartitions, start_partitions, unsupported
from chaos.processes import Supervisor, chaos_processes
from chaos.stack import ChaosStack
from infra.health import ensure_bucket, s3_client

API_PORTS = [28001, 28002]
# PostgreSQL's disk in the run (in RAM), filled by the disk-full fault: room for what a full
# run's data directory and WAL grow to (the summary says how much was used; RELIABILITY.md).
PG_DISK_MIB = 1536
WORKER_TIERS = ["basic", "high_performance"]  # trial users run on basic, pro on high_performance


@dataclass(frozen=True)
class Profile:
    name: str
    load: LoadConfig
    fault_rounds: int
    quiesce_timeout_s: float


QUICK = Profile("quick", LoadConfig(users=40, jobs=150, duration_s=60), 1, 240)
FULL = Profile("full", LoadConfig(users=200, jobs=2000, duration_s=900), 4, 900)


async def _wait_ready(urls: list[str], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5) as client:
        for url in urls:
            while True:
                try:
                    if (await client.get(f"{url}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not become ready in {timeout_s}s")
                await asyncio.sleep(0.5)


async def _prepare(env: dict[str, str], log: Path) -> None:
    """Topics and tables before anything starts (each process would also do it on start);
    the images bucket is created by the caller (a bucket of the run's own)."""
    for args in (["db", "migrate"], ["kafka", "init"]):
        with log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cli", *args, env=env, stdout=out, stderr=out
            )
            if await proc.wait() != 0:
                raise RuntimeError(f"pinksea {' '.join(args)} failed; see {log}")


async def run_chaos(profile: Profile, seed: int, out_dir: Path, keep_stack: bool) -> dict[str, Any]:
    """The run, with PostgreSQL's data directory on a disk of its own where one can be mounted
    (root), so that the plan can fill it; the plan says when it cannot."""
    with contextlib.ExitStack() as disks:
        try:
            pg_disk: Path | None = disks.enter_context(tmpfs(PG_DISK_MIB, "pinksea-chaos-pg-"))
            no_disk_full = None
        except DiskUnavailable as e:
            pg_disk, no_disk_full = None, str(e)
        if keep_stack:
            disks.pop_all()  # the stack stays up for inspection, on its disk
        return await _run(profile, seed, out_dir, keep_stack, pg_disk, no_disk_full)


async def _run(
    profile: Profile,
    seed: int,
    out_dir: Path,
    keep_stack: bool,
    pg_disk: Path | None,
    no_disk_full: str | None,
) -> dict[str, Any]:
    console = Console()
    run_id = f"{seed}x{int(time.time()) % 10**6}"
    out_dir.mkdir(parents=True, exist_ok=True)
    stack = ChaosStack(run_id, log=out_dir / "stack.log", pg_disk=pg_disk, pg_disk_mib=PG_DISK_MIB)
    t0 = time.monotonic()
    console.print(f"chaos {profile.name}: seed {seed}, run {run_id}, logs in {out_dir}")
    await stack.start()
    env = stack.pinksea_env()
    await _prepare(env, out_dir / "stack.log")
    settings = stack.settings()
    s3 = s3_client(settings)
    await asyncio.to_thread(ensure_bucket, s3, settings.s3_bucket, settings.s3_region)
    supervisor = Supervisor(chaos_processes(API_PORTS, WORKER_TIERS), env, out_dir / "logs")
    urls = [f"http://127.0.0.1:{p}" for p in API_PORTS]
    # Network partitions where namespaces can be made (root); the plan says when they cannot.
    no_partitions = unsupported()
    partitions: ChaosPartitions | None = None
    if no_partitions is None:
        partitions = await asyncio.to_thread(start_partitions, stack, supervisor)
    else:
        console.print(f"no network partitions in this run: {no_partitions}")
    plan = plan_faults(
        seed,
        [c.name for c in supervisor.children],
        profile.load.duration_s,
        profile.fault_rounds,
        partitions=partitions is not None,
        disk_full=pg_disk is not None,
    )
    described = [f.describe() for f in plan]
    if no_partitions is not None:
        described.append(f"(no network partitions: {no_partitions})")
    if no_disk_full is not None:
        console.print(f"no disk-full fault in this run: {no_disk_full}")
        described.append(f"(no disk-full fault: {no_disk_full})")
    (out_dir / "fault-plan.txt").write_text("\n".join(described) + "\n")
    injector = Injector(stack, supervisor, plan, partitions)
    pool: asyncpg.Pool | None = None
    try:
        await supervisor.start()
        await _wait_ready(urls)
        console.print(
            f"stack and {len(supervisor.children)} processes up in {time.monotonic() - t0:.0f}s"
        )
        load = LoadGenerator(settings, urls, profile.load, seed, run_id)
        started = time.monotonic()
        load_result, _ = await asyncio.gather(load.run(), injector.run(started))
        console.print(f"load and faults done in {time.monotonic() - started:.0f}s")
        pool = await asyncpg.create_pool(settings.database_url, min_size=3, max_size=4)
        quiet = await wait_for_quiescence(settings, pool, profile.quiesce_timeout_s)
        console.print(f"quiescence: {quiet.last} after {quiet.waited_s:.0f}s")
        verdict = await judge(settings, pool, load_result)
        # One more kill -9 of S3 once every image is stored: the check then shows that all of
        # them survive one (the plan's kill may come before the first job has completed).
        last_s3_kill = datetime.now(UTC)
        await stack.restart_s3(1.0)
        images = await check_images(settings, pool, last_s3_kill)
        pg_disk_used_mib = stack.pg_disk_used_mib()
    finally:
        if pool is not None:
            await pool.close()
        await supervisor.stop()
        if partitions is not None:
            await asyncio.to_thread(partitions.close)  # after the processes inside have stopped
        if not keep_stack:
            await stack.stop()
    summary = {
        "profile": profile.name,
        "seed": seed,
        "run_id": run_id,
        "load": asdict(profile.load),
        "faults": dict(injector.injected),
        "fault_log": injector.log,
        "crash_restarts": dict(supervisor.crashes),
        "restarts": dict(supervisor.restarts),
        "requests": dict(Counter(load_result.answers)),
        "retries": load_result.retries,
        "refused_after_retries": dict(load_result.refused),
        "accepted_jobs": len(load_result.accepted),
        "cancels": load_result.cancels,
        "grants": load_result.grants,
        "webhook_deliveries": load_result.webhooks,
        "unexpected_answers": load_result.unexpected,
        "quiescent": quiet.reached,
        "quiescence_s": round(quiet.waited_s, 1),
        "events": verdict.events,
        "settled_jobs": verdict.settled_jobs,
        "jobs_by_status": verdict.jobs_by_status,
        "verify_findings": verdict.verify_findings,
        "reconcile_discrepancies": verdict.reconcile_discrepancies,
        "lost": verdict.lost,
        "unfinished": verdict.unfinished,
        "images_checked": images.checked,
        "images_before_s3_kill": images.before_s3_kill,
        "missing_images": images.missing,
        "discrepancies": verdict.discrepancies + len(images.missing) + (0 if quiet.reached else 1),
        "pg_disk": None if pg_disk is None else f"{pg_disk_used_mib} of {PG_DISK_MIB} MiB used",
        "wall_s": round(time.monotonic() - t0, 1),
    }
    (out_dir / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(console, summary)
    return summary


def print_summary(console: Console, s: dict[str, Any]) -> None:
    faults = Table(title=f"chaos {s['profile']} run, seed {s['seed']}: faults injected")
    faults.add_column("kind")
    faults.add_column("count", justify="right")
    for kind, n in sorted(s["faults"].items()):
        faults.add_row(kind, str(n))
    for name, n in sorted(s["crash_restarts"].items()):
        # Exits the injector did not cause: a process giving up while a dependency was down.
        faults.add_row(f"  then exited by itself: {name}", str(n))
    console.print(faults)
    table = Table(title="outcome")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("jobs accepted (202)", s["accepted_jobs"]),
        *((f"  ended {k}", v) for k, v in sorted(s["jobs_by_status"].items())),
        ("jobs settled (HoldSettled)", s["settled_jobs"]),
        ("cancels sent", s["cancels"]),
        ("credit grants", s["grants"]),
        ("Stripe webhook deliveries (each twice)", s["webhook_deliveries"]),
        ("client retries (same Idempotency-Key)", s["retries"]),
        (
            "refused as documented (429 at give-up, grant expired while retried)",
            sum(s["refused_after_retries"].values()),
        ),
        ("events in the store", s["events"]),
        ("quiescent", f"{s['quiescent']} after {s['quiescence_s']}s"),
        ("verify findings", len(s["verify_findings"])),
        ("reconcile discrepancies", len(s["reconcile_discrepancies"])),
        ("acknowledged but lost", len(s["lost"])),
        ("accepted but never ended", len(s["unfinished"])),
        ("images checked in S3 (PNG + thumbnail)", s["images_checked"]),
        ("  of them stored before S3's last kill -9", s["images_before_s3_kill"]),
        ("images missing or of the wrong size", len(s["missing_images"])),
        ("unexpected answers (500s, outages > 180 s)", len(s["unexpected_answers"])),
        ("PostgreSQL's disk (tmpfs) at the end", s["pg_disk"] or "not on a disk of its own"),
        ("DISCREPANCIES (must be 0)", s["discrepancies"]),
        ("wall time", f"{s['wall_s']}s"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
    for key in (
        "verify_findings",
        "reconcile_discrepancies",
        "lost",
        "unfinished",
        "missing_images",
        "unexpected_answers",
    ):
        for line in s[key][:10]:
            console.print(f"[red]{key}[/red] {line}")
