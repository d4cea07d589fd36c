"""Every metric the dashboard, the alert rules and the CloudWatch alarms name is emitted by a
real process: each ``pinksea`` command of the stack runs as its own process (as in
production), one job runs through them, then ``/metrics`` of every process is scraped and
compared (infra/observability/check.py). The metrics table of docs/DEPLOY.md is held to the
same scrape: every pinksea_* family a process declares is listed there, and every process a
row names declares it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from domain.application import PinkseaApplication
from domain.jobs import JobParameters
from eventstore.persistence import event_store_env
from infra.observability import check
from infra.settings import Settings
from tests.integration.streaming_kit import fresh_database, prepare_stack, wait_until

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "docs" / "DEPLOY.md"
# One step at 256 x 256: a budget (1.5 x the estimate + 1 s) of 3.7 s, mostly for the
# pipeline's fixed cost, which is what a loaded CPU slows down most (at 64 x 64 the budget is
# 1.25 s and a busy two-core machine overruns it).
JOB = JobParameters(model="tiny-sd", prompt="a pink sea at dawn", steps=1, width=256, height=256)
# Declared by the GPU worker, sampled only on CUDA (gpu_consumer/metrics.py): on the CPU they
# are rightly without samples.
CUDA_ONLY = {
    "pinksea_gpu_utilization_ratio",
    "pinksea_gpu_memory_used_bytes",
    "pinksea_gpu_memory_total_bytes",
}


PROCESSES = ("api", "relay", "project", "scheduler", "settle", "expire", "gpu-worker")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def commands(ports: dict[str, int]) -> dict[str, list[str]]:
    """Every process of the stack, with its /metrics port (the API serves /metrics itself)."""
    worker = ["gpu-worker", "--tier", "basic", "--device", "cpu", "--worker-id", "metrics-w1"]
    args = {
        "api": ["api", "--port", str(ports["api"])],
        "relay": ["relay"],
        "project": ["project"],
        "scheduler": ["scheduler"],
        "settle": ["settle"],
        "expire": ["expire", "--interval", "3"],
        "gpu-worker": worker,
    }
    return {
        name: a if name == "api" else [*a, "--metrics-port", str(ports[name])]
        for name, a in args.items()
    }


@pytest.fixture
def stack(settings: Settings) -> Iterator[Settings]:
    """The session's Redis prefix and bucket; a database and topics of this test's own."""
    with fresh_database(settings.database_url) as url:
        yield settings.model_copy(
            update={
                "database_url": url,
                "kafka_topic_prefix": f"{settings.kafka_topic_prefix}m{uuid.uuid4().hex[:8]}.",
            }
        )


def stack_env(settings: Settings, models_cache: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PINKSEA_DATABASE_URL": settings.database_url,
        "PINKSEA_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "PINKSEA_KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
        "PINKSEA_REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "PINKSEA_S3_BUCKET": settings.s3_bucket,
        "PINKSEA_MODELS_DIR": "",
        "PINKSEA_MODELS_CACHE_DIR": str(models_cache),
        "PINKSEA_HEARTBEAT_INTERVAL_S": "0.5",
    }


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def logs(log_dir: Path, lines: int = 15) -> str:
    return "\n".join(
        f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        for log in sorted(log_dir.glob("*.log"))
    )


async def within(predicate, timeout_s: float, what: str, log_dir: Path) -> None:
    try:
        await wait_until(predicate, timeout=timeout_s, interval=0.5)
    except AssertionError:
        raise AssertionError(f"no {what} within {timeout_s} s\n{logs(log_dir)}") from None


def documented_metrics() -> dict[str, set[str]]:
    """The metrics table of docs/DEPLOY.md: metric -> the processes its row names."""
    text = DEPLOY.read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`(pinksea_\w+)`", cells[0]) if len(cells) >= 4 else None
        if m:
            rows[m.group(1)] = set(re.findall(r"`([a-z-]+)`", cells[3]))
    return rows


def declares(found: check.Emitted, metric: str, process: str) -> bool:
    """The table names counters with their _total and histograms by their base name."""
    return any(process in found.declared.get(metric + suffix, set()) for suffix in ("", "_bucket"))


async def test_every_metric_the_dashboard_rules_and_alarms_name_is_emitted(
    stack: Settings, tmp_path: Path
) -> None:
    await prepare_stack(stack)
    ports = {name: free_port() for name in PROCESSES}
    env = stack_env(stack, tmp_path / "models")
    urls = {name: f"http://127.0.0.1:{port}/metrics" for name, port in ports.items()}
    children: dict[str, subprocess.Popen[bytes]] = {}
    app = PinkseaApplication(env=event_store_env(stack.database_url, pool_size=2))
    try:
        for name, args in commands(ports).items():
            with (tmp_path / f"{name}.log").open("wb") as log:
                children[name] = subprocess.Popen(
                    [sys.executable, "-m", "cli", *args], cwd=REPO, env=env, stdout=log, stderr=log
                )

        async def all_answer() -> bool:
            dead = [n for n, c in children.items() if c.poll() is not None]
            assert not dead, f"exited: {dead}; see the logs in {tmp_path}"
            return all(
                await asyncio.gather(*(asyncio.to_thread(answers, u) for u in urls.values()))
            )

        await within(all_answer, 180, "every process's /metrics", tmp_path)

        # One job through every process, so the job-time histogram, the settlement counters
        # and the S3 counters have samples; /readyz gives the API's S3 client a request.
        app.register_user("mia", datetime.now(UTC))
        outcomes = []
        # A loaded CPU may still run a job past its budget: then another one.
        for attempt in range(3):
            job = app.submit_job(
                "mia", idempotency_key=f"m{attempt}", params=JOB, at=datetime.now(UTC)
            )
            assert job.status == "accepted" and job.job_id is not None, job

            async def ended(job_id: uuid.UUID = job.job_id) -> bool:
                return (await asyncio.to_thread(app.job, job_id)).is_terminal

            await within(ended, 180, "end of the job", tmp_path)
            done = app.job(job.job_id)
            outcomes.append((done.status, done.failure))
            if done.status == "completed":
                break
        assert outcomes[-1][0] == "completed", (outcomes, logs(tmp_path))
        await asyncio.to_thread(answers, f"http://127.0.0.1:{ports['api']}/readyz")

        lag_metric = [sys.executable, "-m", "cli", "lag-metric", "--once", "--dry-run"]
        queue = ["--queue-metrics-url", urls["scheduler"]]
        dry_run = subprocess.run(
            [*lag_metric, *queue], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
        assert dry_run.returncode == 0, dry_run.stderr[-3000:]
        cloudwatch_data = json.loads(dry_run.stdout)

        # The gauges of `pinksea project` refresh on intervals (15 s for the lag): wait for the
        # comparison to settle rather than for a fixed time.
        result = check.CheckResult()

        async def settled() -> bool:
            nonlocal result
            result = await asyncio.to_thread(
                check.check_emitted, urls, cloudwatch_data=cloudwatch_data
            )
            return result.ok and set(result.without_samples) <= CUDA_ONLY

        with contextlib.suppress(AssertionError):
            await wait_until(settled, timeout=90, interval=2)
        assert result.ok, result.summary()
        assert set(result.without_samples) <= CUDA_ONLY, result.summary()
        assert result.cloudwatch_checked

        # docs/DEPLOY.md's table: every pinksea_* family some process declares, and each row's
        # processes do declare it. (Not "only those": an imported module declares its metrics
        # in every process that imports it, e.g. the relay's gauges.)
        found = check.emitted(await asyncio.to_thread(check.scrape, urls))
        documented = documented_metrics()
        families = {f for f in map(_family, found.declared) if f and f.startswith("pinksea_")}
        undocumented = sorted(families - set(documented))
        assert undocumented == [], f"emitted but not in docs/DEPLOY.md's table: {undocumented}"
        wrong = sorted(
            f"{metric} ({process})"
            for metric, processes in documented.items()
            for process in processes
            if not declares(found, metric, process)
        )
        assert wrong == [], f"docs/DEPLOY.md names a process that does not emit it: {wrong}"
    finally:
        app.close()
        for child in children.values():
            if child.poll() is None:
                child.terminate()
        for child in children.values():
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _family(sample_name: str) -> str | None:
    """The name docs/DEPLOY.md lists a declared sample name under: counters with _total,
    histograms by their base name; not the _sum, _count and _created series of a family."""
    if sample_name.endswith(("_sum", "_count", "_created")):
        return None
    return sample_name.removesuffix("_bucket")
