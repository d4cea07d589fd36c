"""``pinksea up``: every process of the backend in the foreground, for local use.

Each process runs as its own ``pinksea`` subcommand (exactly what production runs, one per
container); which, and on which ports, is the topology's (cli/topology.py: its local processes,
one GPU worker per tier). This supervisor restarts one that dies and stops them all on Ctrl-C or
SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import typer

from cli.app import LOCAL_PANEL, app
from cli.topology import API, LOCAL_PROCESSES


@dataclass
class Child:
    name: str
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)

    def start(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "cli", *self.args], env=env)
        self.started_at = time.monotonic()


def processes(api_port: int, tiers: list[str], device: str) -> list[Child]:
    """The topology's local processes on one host: each on its default /metrics port, the API
    on ``api_port``, and a GPU worker per tier on ``device``, tier i's /metrics on base + i."""
    children = []
    for spec in LOCAL_PROCESSES:
        if spec is API:
            children.append(Child(spec.name, spec.argv(port=api_port)))
        elif spec.per_tier:
            assert spec.local_metrics_base is not None
            for i, tier in enumerate(tiers):
                extra = ["--device", device, "--worker-id", f"local-{tier}-{device}"]
                port = spec.local_metrics_base + i
                children.append(
                    Child(f"{spec.name}-{tier}", spec.argv(tier=tier, extra=extra, port=port))
                )
        else:
            children.append(Child(spec.name, spec.argv()))
    return children


@app.command(rich_help_panel=LOCAL_PANEL)
def up(
    api_port: int = typer.Option(API.metrics_port, help="Port of the REST API."),
    tiers: str = typer.Option(
        "basic,high_performance", help="One GPU worker per tier (comma-separated)."
    ),
    device: str = typer.Option("cpu", help="Their device: cpu or cuda:N."),
    dev_tokens: bool = typer.Option(True, help="Accept `pinksea dev-token` JWTs in the API."),
) -> None:
    """Run the API, relay, projections, scheduler, settler, expiry, notifier and GPU workers."""
    env = dict(os.environ)
    env.setdefault("PINKSEA_LOG_JSON", "false")
    if dev_tokens:
        env["PINKSEA_DEV_JWT_ENABLED"] = "true"
    children = processes(api_port, [t for t in tiers.split(",") if t], device)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for child in children:
        child.start(env)
    typer.echo(f"pinksea up: {', '.join(c.name for c in children)}; API on :{api_port}")
    try:
        while not stopping:
            time.sleep(0.5)
            for child in children:
                assert child.process is not None
                code = child.process.poll()
                if code is None or stopping:
                    continue
                # Back off a crash loop; a process that ran a while restarts at once.
                quick = time.monotonic() - child.started_at < 5
                typer.echo(f"pinksea up: {child.name} exited with {code}; restarting", err=True)
                time.sleep(2 if quick else 0)
                child.restarts += 1
                child.start(env)
    finally:
        for child in children:
            if child.process and child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + 70  # a GPU worker may finish its job first
        for child in children:
            if child.process:
                try:
                    child.process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.process.kill()
        typer.echo("pinksea up: stopped")
