"""One rehearsal, start to verdict:

1. render every task's environment from the Terraform, with production's values, and check it
   as the processes will (unknown names, invalid values, what the API refuses to start without);
2. start the private stack, swap only the endpoints, check the environments again;
3. start every process with exactly its task's environment (the lag-metric sidecar once the
   scheduler it reads answers);
4. the paths a real user takes (rehearsal/checks.py), then the ledger verified;
5. the summary table; the result is also written as JSON. Exit 1 on any failed check.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from rich.console import Console
from rich.table import Table

from chaos.processes import Child, Supervisor
from rehearsal import checks as c
from rehearsal.oidc import OidcProvider
from rehearsal.render import (
    SWAPS,
    LocalStack,
    Task,
    environment_problems,
    exact_environ,
    rehearsal_vars,
    render_tasks,
    swap_for_local,
)
from rehearsal.stack import (
    MOTO_KEY,
    MOTO_SECRET,
    RehearsalStack,
    StripeRecorder,
    container_base_env,
    free_port,
    wait_until,
)

CLIENT_ID = "pinksea-rehearsal-web"  # the Cognito app client the API accepts
READY_TIMEOUT_S = 180.0
GPU_TIERS = ("basic",)  # the tiny model runs on the CPU; the job's plan (starter) is basic


# ----------------------------------------------------------------------- secrets, args


def secret_values(tasks: list[Task], by_name: dict[str, str]) -> dict[str, str]:
    """Secrets Manager for the rehearsal: each referenced secret's value, by reference."""
    store = {}
    for task in tasks:
        for name, ref in task.secrets.items():
            if name not in by_name:
                raise RuntimeError(f"{task.name} reads the secret {name}, which has no value")
            store[ref] = by_name[name]
    return store


def _options(command: str) -> set[str]:
    """The options a ``pinksea`` subcommand takes (from the CLI itself)."""
    import typer.main

    from cli.main import app

    group: Any = typer.main.get_command(app)
    return {opt for p in group.commands[command].params for opt in p.opts}


def local_args(
    task: Task, api_port: int, metrics_port: int, scheduler_metrics_port: int
) -> tuple[list[str], list[str]]:
    """The task's command as the rehearsal runs it, and what changed: loopback and private
    ports instead of the container's (``metrics_port``: this process's /metrics, scraped for
    the metrics check), the CPU for the GPU worker. Nothing else."""
    args, notes = list(task.command[1:]), []  # "pinksea" is `python -m cli`

    def set_option(name: str, value: str) -> None:
        if name in args:
            old = args[args.index(name) + 1]
            args[args.index(name) + 1] = value
            notes.append(f"{name} {old} -> {value}")
        else:
            args.extend([name, value])
            notes.append(f"{name} {value}")

    if args[0] == "api":
        set_option("--host", "127.0.0.1")
        set_option("--port", str(api_port))
        if "--metrics-port" in args:  # /metrics apart from the API, as deployed
            set_option("--metrics-port", str(metrics_port))
    elif "--metrics-port" in _options(args[0]):
        set_option("--metrics-port", str(metrics_port))
    if args[0] == "gpu-worker":
        set_option("--device", "cpu")
    if args[0] == "lag-metric" and "--queue-metrics-url" in args:
        set_option("--queue-metrics-url", f"http://127.0.0.1:{scheduler_metrics_port}/metrics")
    return args, notes


async def _run_cli(args: list[str], env: dict[str, str], log: Path, timeout_s: float) -> int:
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", *args, env=env, stdout=out, stderr=out
        )
        try:
            return await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return -9


# --------------------------------------------------------------------------- the run


async def run_rehearsal(out_dir: Path, keep_stack: bool) -> dict[str, Any]:
    console = Console(width=max(Console().width, 140))  # CI logs: a readable table
    run_id = c.new_run_id()
    # This run's logs only: the supervisor appends, and a failure's tail must be this run's.
    shutil.rmtree(out_dir / "logs", ignore_errors=True)
    (out_dir / "stack.log").unlink(missing_ok=True)
    (out_dir / "logs").mkdir(parents=True)
    t0 = time.monotonic()
    checks = c.Checks()
    stack = RehearsalStack(run_id, log=out_dir / "stack.log")
    console.print(f"rehearsal {run_id}: logs in {out_dir}")

    # 1. Production's environments, before anything local is involved.
    variables = rehearsal_vars(stack.oidc_issuer, CLIENT_ID)
    tasks = render_tasks(variables, GPU_TIERS)
    signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    webhook_secret = f"whsec_{secrets.token_hex(16)}"
    stripe_key = f"sk_test_rehearsal{secrets.token_hex(12)}"
    secret_by_name = {
        "PINKSEA_DATABASE_URL": stack.database_url,
        "PINKSEA_REDIS_URL": f"redis://127.0.0.1:{stack.redis_port}/0",
        "PINKSEA_STRIPE_API_KEY": stripe_key,
        "PINKSEA_STRIPE_WEBHOOK_SECRET": webhook_secret,
        "PINKSEA_PERSONAL_DATA_KEK": base64.b64encode(secrets.token_bytes(32)).decode(),
        "PINKSEA_CLOUDFRONT_PRIVATE_KEY": signing_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    }
    store = secret_values(tasks, secret_by_name)
    production = {t.name: t.env(store) for t in tasks}
    with_started = time.monotonic()
    problems = {
        t.name: environment_problems(production[t.name], serves_users=t.name == "api")
        for t in tasks
    }
    checks.record(
        "rendered production environments pass every process's checks",
        not any(problems.values()),
        "; ".join(f"{n}: {p}" for n, p in problems.items() if p)
        or f"{len(tasks)} tasks: {', '.join(t.name for t in tasks)}",
        time.monotonic() - with_started,
    )
    s3_credentials_check(checks, production["api"])

    recorder: StripeRecorder | None = None
    supervisor: Supervisor | None = None
    sidecars: Supervisor | None = None
    summary: dict[str, Any] = {"run_id": run_id}
    try:
        # 2. The private stack, and the endpoints swapped for it.
        started = time.monotonic()
        await stack.start()
        recorder = StripeRecorder(f"http://127.0.0.1:{stack.stripe_mock_port}")
        await recorder.start()
        provider = OidcProvider(stack.oidc_url)
        async with httpx.AsyncClient(timeout=10) as http:
            discovery = await provider.discover(http)
        local = LocalStack(
            kafka_bootstrap=f"127.0.0.1:{stack.kafka_sasl_ssl_port}",
            s3_endpoint=f"http://127.0.0.1:{stack.s3_port}",
            s3_access_key_id=stack.s3_access_key_id,
            s3_secret_access_key=stack.s3_secret_access_key,
            aws_endpoint=stack.aws_url,
            stripe_api_base=recorder.url,
            jwks_url=discovery["jwks_uri"],
            kafka_scram_user=stack.scram_user,
            kafka_scram_password=stack.scram_password,
            kafka_ca_file=str(stack.kafka_ca_file),
        )
        swapped: dict[str, dict[str, str]] = {}
        changes: dict[str, dict[str, str]] = {}
        for t in tasks:
            swapped[t.name], changes[t.name] = swap_for_local(production[t.name], local)
        console.print(
            f"private stack up in {time.monotonic() - started:.0f}s; Secrets Manager's values: "
            "the private stack's database and Redis URLs, a Stripe key, webhook secret and "
            f"CloudFront key made for this run ({', '.join(secret_by_name)}); swapped:\n"
            + "\n".join(
                f"  {name}: {SWAPS[name]}"
                for name in SWAPS
                if any(name in ch for ch in changes.values())
            )
        )
        problems = {
            t.name: environment_problems(swapped[t.name], serves_users=t.name == "api")
            for t in tasks
        }
        checks.record(
            "swapped environments still pass them (only endpoints changed)",
            not any(problems.values()) and all(set(ch) <= set(SWAPS) for ch in changes.values()),
            "; ".join(f"{n}: {p}" for n, p in problems.items() if p)
            or f"{len({k for ch in changes.values() for k in ch})} names swapped",
        )
        with exact_environ(swapped["api"]):
            from infra.settings import Settings

            settings = Settings(_env_file=None)
        s3 = _s3(settings)
        await asyncio.to_thread(_ensure_bucket, s3, settings.s3_bucket, settings.s3_region)
        async with checks.check("system data: style presets synced (pinksea presets sync)") as n:
            code = await _run_cli(
                ["presets", "sync"],
                {**container_base_env(out_dir), **swapped["api"]},
                out_dir / "logs" / "presets-sync.log",
                60,
            )
            c.require(code == 0, f"pinksea presets sync exited {code} (see presets-sync.log)")
            n.append(f"s3://{settings.s3_bucket}/system/style_presets/index.json")
        notifier = _notifier_settings(tasks, swapped)
        if notifier is not None:
            # What Terraform's SES identity is in production: the sender's domain, verified.
            await asyncio.to_thread(_verify_sender, notifier)

        # 3. The processes, each with its task's environment.
        api_port = free_port()
        # Every process's /metrics on a port of its own (the scheduler's is the sidecar's too).
        metrics_ports = {t.name: free_port() for t in tasks}
        scheduler = next(t for t in tasks if t.command[1:2] == ["scheduler"])
        scheduler_metrics_port = metrics_ports[scheduler.name]
        base = container_base_env(out_dir)
        children: list[Child] = []
        sidecar_children: list[Child] = []
        arg_notes: dict[str, list[str]] = {}
        metrics_urls = {"api": f"http://127.0.0.1:{api_port}/metrics"}
        for t in tasks:
            args, arg_notes[t.name] = local_args(
                t, api_port, metrics_ports[t.name], scheduler_metrics_port
            )
            if "--metrics-port" in args:
                metrics_urls[t.name] = f"http://127.0.0.1:{metrics_ports[t.name]}/metrics"
            child = Child(t.name, args, env={**base, **swapped[t.name]})
            (sidecar_children if t.sidecar_of else children).append(child)
        supervisor = Supervisor(children, {}, out_dir / "logs")
        started = time.monotonic()
        await supervisor.start()
        api_url = f"http://127.0.0.1:{api_port}"
        async with httpx.AsyncClient(timeout=5) as probe:

            async def ready() -> bool:
                return (await probe.get(f"{api_url}/readyz")).status_code == 200

            async def scheduler_metrics() -> bool:
                r = await probe.get(f"http://127.0.0.1:{scheduler_metrics_port}/metrics")
                return r.status_code == 200

            await wait_until("the API's /readyz", ready, READY_TIMEOUT_S)
            await wait_until("the scheduler's /metrics", scheduler_metrics, READY_TIMEOUT_S)
        sidecars = Supervisor(sidecar_children, {}, out_dir / "logs")
        await sidecars.start()
        console.print(
            f"{len(children) + len(sidecar_children)} processes up in "
            f"{time.monotonic() - started:.0f}s"
        )

        # 4. What users do.
        public_key = signing_key.public_key()
        async with (
            httpx.AsyncClient(base_url=api_url, timeout=30) as api,
            httpx.AsyncClient(timeout=10) as http,
        ):
            ctx = c.Context(
                api=api,
                http=http,
                provider=provider,
                client_id=CLIENT_ID,
                settings=settings,
                recorder=recorder,
                cloudfront_public_key=public_key,
                s3=s3,
                cloudwatch=_cloudwatch(settings),
                run_id=run_id,
            )
            users = await c.sign_in(checks, ctx)
            if users is not None:
                await c.stripe(checks, ctx, users, webhook_secret)
                await c.job_flow(checks, ctx, users)
                if notifier is not None and notifier.ses_endpoint_url:
                    await c.low_balance_email(
                        checks, ctx, users, notifier.ses_endpoint_url, notifier.email_sender
                    )
            await c.kafka_over_sasl_ssl(checks, ctx)
            await c.lag_metric_published(checks, ctx, settings.environment)
            await c.metrics_emitted(checks, metrics_urls)
        async with checks.check("ledger verify (the settler's environment)") as n:
            settler = next(t for t in tasks if t.command[1:2] == ["settle"])
            code = await _run_cli(
                ["ledger", "verify"],
                {**base, **swapped[settler.name]},
                out_dir / "logs" / "ledger-verify.log",
                120,
            )
            c.require(
                code == 0,
                f"pinksea ledger verify exited {code} (see {out_dir}/logs/ledger-verify.log)",
            )
            n.append("0 findings")
        await c.processes_stayed_up(
            checks, {**supervisor.crashes, **(sidecars.crashes if sidecars else {})}
        )
        summary.update(
            swaps={
                name: SWAPS[name] for name in SWAPS if any(name in ch for ch in changes.values())
            },
            swapped_per_task={n: sorted(ch) for n, ch in changes.items()},
            args=arg_notes,
            commands={t.name: t.command for t in tasks},
        )
    except Exception as exc:  # the stack or a process did not come up: that is the verdict
        checks.record("the rehearsal ran to the end", False, c._short_trace(exc))
    finally:
        for sup in (sidecars, supervisor):
            if sup is not None:
                await sup.stop(grace_s=20)
        if recorder is not None:
            await recorder.stop()
        if not keep_stack:
            await stack.stop()
    summary.update(
        checks=[asdict(o) for o in checks.outcomes],
        failed=len(checks.failed),
        wall_s=round(time.monotonic() - t0, 1),
    )
    (out_dir / "result.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print_summary(console, summary)
    if checks.failed:
        print_log_tails(console, out_dir)
    return summary


def print_log_tails(console: Console, out_dir: Path, lines: int = 8) -> None:
    """The end of every process's log, so that a failure in CI says where to look."""
    for log in [*sorted((out_dir / "logs").glob("*.log")), out_dir / "stack.log"]:
        if log.is_file():
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            console.print(f"[bold]----- {log} (last {len(tail)} lines)[/bold]", highlight=False)
            for line in tail:
                console.print(line[:400], markup=False, highlight=False)


def s3_credentials_check(checks: c.Checks, env: dict[str, str]) -> None:
    """In production PINKSEA_S3_ACCESS_KEY_ID is empty: the S3 client must then sign with the
    task role's credentials (here: an ECS-style stand-in in AWS_* variables), not an empty key.
    A presigned URL names the key it was signed with, without any request."""
    import os

    from infra.s3 import s3_client
    from infra.settings import Settings

    role_key = "ASIAREHEARSALTASKROLE"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    try:
        os.environ.update(AWS_ACCESS_KEY_ID=role_key, AWS_SECRET_ACCESS_KEY="role-secret")
        with exact_environ(env):
            settings = Settings(_env_file=None)
            url = s3_client(settings).generate_presigned_url(
                "get_object", Params={"Bucket": settings.s3_bucket, "Key": "k"}, ExpiresIn=60
            )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    credential = parse_qs(urlsplit(url).query).get("X-Amz-Credential", [""])[0]
    signed_with = credential.split("/")[0]
    checks.record(
        "production S3 client signs with the task role's credentials",
        signed_with == role_key,
        f"PINKSEA_S3_ACCESS_KEY_ID={env.get('PINKSEA_S3_ACCESS_KEY_ID')!r}: requests signed "
        f"with access key {signed_with!r}",
    )


def _notifier_settings(tasks: list[Task], swapped: dict[str, dict[str, str]]) -> Any:
    """What the notifier task reads, when there is one that sends through SES."""
    from infra.settings import Settings

    for t in tasks:
        if t.command[1:2] == ["notify"]:
            with exact_environ(swapped[t.name]):
                settings = Settings(_env_file=None)
            return settings if settings.email_backend == "ses" else None
    return None


def _verify_sender(settings: Any) -> None:
    import boto3

    ses = boto3.client(
        "sesv2",
        endpoint_url=settings.ses_endpoint_url,
        region_name=settings.ses_region,
        aws_access_key_id=MOTO_KEY,
        aws_secret_access_key=MOTO_SECRET,
    )
    domain = settings.email_sender.rpartition("@")[2].rstrip(">")
    ses.create_email_identity(EmailIdentity=domain)  # moto verifies it at once


def _s3(settings: Any) -> Any:
    from infra.health import s3_client

    return s3_client(settings)


def _cloudwatch(settings: Any) -> Any:
    import boto3

    return boto3.client(
        "cloudwatch",
        endpoint_url=settings.cloudwatch_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=MOTO_KEY,
        aws_secret_access_key=MOTO_SECRET,
    )


def _ensure_bucket(s3: Any, bucket: str, region: str) -> None:
    from infra.health import ensure_bucket

    ensure_bucket(s3, bucket, region)


def print_summary(console: Console, s: dict[str, Any]) -> None:
    table = Table(title=f"production rehearsal {s['run_id']}")
    table.add_column("check")
    table.add_column("result")
    table.add_column("s", justify="right")
    table.add_column("detail", overflow="fold")
    for o in s["checks"]:
        mark = "[green]ok[/green]" if o["ok"] else "[red]FAILED[/red]"
        table.add_row(o["name"], mark, f"{o['seconds']:.1f}", o["detail"])
    console.print(table)
    verdict = (
        "[green]all checks passed[/green]"
        if not s["failed"]
        else f"[red]{s['failed']} failed[/red]"
    )
    console.print(f"{verdict} in {s['wall_s']}s")
