"""The process topology, declared once: which processes the backend runs, each a ``pinksea``
subcommand (what production runs, one per container), the port its ``/metrics`` answers on, and
which run once per GPU tier.

Its users: the commands' own ``--metrics-port`` / ``--port`` defaults (cli/processes.py),
``pinksea up`` (cli/up.py), the chaos harness (chaos/processes.py), and the README's process
table, which tests/unit/test_cli.py holds to it. The production rehearsal takes the topology
from the Terraform instead (what is deployed), and the same test holds the Terraform's
commands to this one.

Nothing here imports Typer or a command module: the chaos harness imports it as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessSpec:
    name: str  # the `pinksea` subcommand, and the process's name
    metrics_port: int | None  # where /metrics answers, the command's default; None: no /metrics
    port_option: str = "--metrics-port"  # the option that moves it (0: no /metrics)
    per_tier: bool = False  # one process per GPU tier (`--tier T`), on a machine of its own
    # `pinksea up` runs the per-tier processes on one host: tier i's /metrics on this port + i.
    local_metrics_base: int | None = None
    local: bool = True  # run by `pinksea up` and the chaos harness (False: in production only)
    sidecar_of: str | None = None  # runs in that process's task, next to it (production)

    def argv(
        self,
        *,
        tier: str | None = None,
        extra: Sequence[str] = (),
        port: int | None = None,
    ) -> list[str]:
        """The arguments of ``pinksea`` (``python -m cli``) that run this process: the
        subcommand, the tier of a per-tier process, ``extra``, then ``port`` (default: the
        command's own default)."""
        if self.per_tier != (tier is not None):
            raise ValueError(f"{self.name}: a tier {'is' if self.per_tier else 'is not'} needed")
        args = [self.name]
        if tier is not None:
            args += ["--tier", tier]
        args += extra
        if port is not None:
            args += [self.port_option, str(port)]
        return args


API = ProcessSpec("api", 8000, port_option="--port")  # the API serves /metrics itself
GPU_WORKER = ProcessSpec("gpu-worker", 9105, per_tier=True, local_metrics_base=9110)

# In the order `pinksea up` and the chaos harness start them.
PROCESSES: tuple[ProcessSpec, ...] = (
    API,
    ProcessSpec("relay", 9101),
    ProcessSpec("project", 9102),
    ProcessSpec("scheduler", 9103),
    ProcessSpec("settle", 9104),
    ProcessSpec("expire", 9106),
    ProcessSpec("notify", 9107),
    ProcessSpec("webhooks", 9108),
    GPU_WORKER,
    # Publishes consumer lag and the GPU backlog to CloudWatch (the auto-scaling signal), reading
    # the scheduler's /metrics on 127.0.0.1: nothing to publish to locally.
    ProcessSpec("lag-metric", None, local=False, sidecar_of="scheduler"),
)

LOCAL_PROCESSES: tuple[ProcessSpec, ...] = tuple(p for p in PROCESSES if p.local)


def process(name: str) -> ProcessSpec:
    for spec in PROCESSES:
        if spec.name == name:
            return spec
    raise KeyError(f"no process {name!r} in the topology")


def metrics_port(name: str) -> int:
    """The default ``/metrics`` port of ``pinksea NAME`` (what its option defaults to)."""
    port = process(name).metrics_port
    if port is None:
        raise KeyError(f"{name} serves no /metrics")
    return port
