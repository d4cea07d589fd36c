"""The Pinksea processes of a chaos run, each its own ``pinksea`` subcommand (what production
runs, one per container), supervised the way an orchestrator would: a process that exits is
started again after a short back-off. The fault injector kill -9s them through here.

Which processes run is the topology's (cli/topology.py, its local processes), so a process added
there is killed here too; the run only changes how many APIs, the ports and the timings.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cli.topology import API, LOCAL_PROCESSES

RESTART_BACKOFF_S = 1.0  # an orchestrator's restart delay; also stops a crash loop spinning


@dataclass
class Child:
    name: str
    args: list[str]
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    killed: bool = False  # by the injector: its exit is expected, not a crash
    env: dict[str, str] | None = None  # its own environment (default: the supervisor's)
    wrap: tuple[str, ...] = ()  # its command's prefix (a network namespace's: chaos/partition.py)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


# The topology's local processes the run leaves out, and why.
NOT_RUN = {
    # The private stack has no SMTP server, and the verdict judges no e-mail (the notifier's
    # exactly-once sending has its own tests: tests/workflows/test_notifier.py).
    "notify": "no SMTP server in the chaos stack",
    # No endpoints are registered in the chaos run, and its seeded fault plans name the
    # processes they replay against (tests/workflows/test_webhooks*.py test the deliveries).
    "webhooks": "no webhook receivers in the chaos stack",
}
EXTRA_ARGS = {"expire": ["--interval", "3"]}  # lots expire within the load window


def chaos_processes(api_ports: list[int], worker_tiers: list[str]) -> list[Child]:
    """The topology's local processes, in its order: an API per port, the per-tier processes
    once per entry of ``worker_tiers`` (on the CPU, each with a stable id: a restarted worker
    resumes its own consumer group), every other once; /metrics off (port 0). The names (the
    fault plan's targets, replayed from its seed) are the process's, numbered when several."""
    children: list[Child] = []
    for spec in LOCAL_PROCESSES:
        if spec.name in NOT_RUN:
            continue
        if spec is API:
            children += [
                Child(f"{spec.name}-{i + 1}", spec.argv(port=p)) for i, p in enumerate(api_ports)
            ]
        elif spec.per_tier:
            for i, tier in enumerate(worker_tiers):
                extra = ["--device", "cpu", "--worker-id", f"chaos-w{i + 1}"]
                args = spec.argv(tier=tier, extra=extra, port=0)
                children.append(Child(f"{spec.name}-{i + 1}", args))
        else:
            children.append(
                Child(spec.name, spec.argv(extra=EXTRA_ARGS.get(spec.name, ()), port=0))
            )
    return children


@dataclass
class Supervisor:
    children: list[Child]
    env: dict[str, str]
    log_dir: Path
    crashes: Counter[str] = field(default_factory=Counter)  # exits the injector did not cause
    restarts: Counter[str] = field(default_factory=Counter)
    _task: asyncio.Task[None] | None = None
    _stopping: bool = False

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    async def _spawn(self, child: Child) -> None:
        with (self.log_dir / f"{child.name}.log").open("ab") as log:
            log.write(f"\n===== {time.strftime('%H:%M:%S')} start\n".encode())
            log.flush()
            child.process = await asyncio.create_subprocess_exec(
                *child.wrap,
                sys.executable,
                "-m",
                "cli",
                *child.args,
                env=child.env if child.env is not None else self.env,
                stdout=log,
                stderr=log,
            )
        child.started_at = time.monotonic()
        child.killed = False

    async def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for child in self.children:
            await self._spawn(child)
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.2)
            for child in self.children:
                if self._stopping or child.alive or child.process is None:
                    continue
                if not child.killed:
                    self.crashes[child.name] += 1
                await asyncio.sleep(RESTART_BACKOFF_S)
                if not self._stopping:
                    self.restarts[child.name] += 1
                    await self._spawn(child)

    def kill(self, name: str) -> None:
        """kill -9: no shutdown handler runs, in-flight work and connections are cut."""
        child = self.child(name)
        if child.alive and child.process is not None:
            child.killed = True
            child.process.send_signal(signal.SIGKILL)

    async def stop(self, grace_s: float = 30) -> None:
        self._stopping = True
        if self._task:
            await self._task
        for child in self.children:
            if child.alive and child.process is not None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in self.children:
            if child.process is None:
                continue
            try:
                await asyncio.wait_for(child.process.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                child.process.kill()
                await child.process.wait()
