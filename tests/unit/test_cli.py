"""The ``pinksea`` CLI's shape, with no service running: the app apart from its commands (no
import circle), one declared process topology (cli/topology.py) and everything that restates
it held to it: the commands' port defaults, ``pinksea up``, the chaos harness, the README's
process table, the Terraform's commands and the GPU worker's image; and every ``pinksea ...``
the README shows is a command that takes those options."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer.main

from chaos.processes import NOT_RUN, chaos_processes
from cli.main import app
from cli.topology import API, GPU_WORKER, LOCAL_PROCESSES, PROCESSES, ProcessSpec, process
from cli.up import processes as up_processes

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / "cli"
TIERS = ["basic", "high_performance"]


def commands() -> dict[str, Any]:
    group: Any = typer.main.get_command(app)
    found: dict[str, Any] = group.commands
    return found


def resolve(words: list[str]) -> tuple[Any, list[str]]:
    """The command ``pinksea WORDS...`` names (groups followed), and the words after it."""
    command: Any = typer.main.get_command(app)
    while words and hasattr(command, "commands") and words[0] in command.commands:
        command, words = command.commands[words[0]], words[1:]
    return command, words


def options(command: Any) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *getattr(p, "secondary_opts", []))}


def assert_accepts(argv: list[str]) -> None:
    """Every ``--option`` in ``argv`` is one the named command takes."""
    command, rest = resolve(argv)
    assert not hasattr(command, "commands"), f"pinksea {' '.join(argv)}: names a group"
    unknown = {w for w in rest if w.startswith("--")} - options(command)
    assert not unknown, f"pinksea {' '.join(argv)}: no such option(s) {sorted(unknown)}"


# ------------------------------------------------------------------------------ the app


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_no_import_circle_the_command_modules_import_the_app_not_main() -> None:
    for path in sorted(CLI.glob("*.py")):
        if path.name in ("main.py", "__main__.py"):
            continue
        imports = imported_modules(path)
        assert "cli.main" not in imports, f"{path.name} imports cli.main"
    for leaf in ("app.py", "topology.py"):
        cli_imports = {m for m in imported_modules(CLI / leaf) if m.startswith("cli")}
        assert cli_imports <= {"cli"}, f"{leaf} imports {cli_imports}"


def test_each_command_module_imports_on_its_own() -> None:
    code = (
        "import sys, cli.ops, cli.ledger, cli.processes, cli.up, cli.demo;"
        "assert 'cli.main' not in sys.modules, 'cli.main imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_the_console_script_and_python_m_cli_run_the_assembled_app() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["pinksea"] == "cli.main:app"
    import cli.app

    assert app is cli.app.app
    out = subprocess.run(
        [sys.executable, "-m", "cli", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    for name in commands():
        assert re.search(rf"│ {re.escape(name)} ", out.stdout), f"{name} not in --help"


def test_the_processes_module_holds_every_process_of_the_topology() -> None:
    import cli.processes

    declared = [
        info.name or info.callback.__name__.replace("_", "-")
        for info in app.registered_commands
        if info.callback is not None and info.callback.__module__ == cli.processes.__name__
    ]
    assert declared == [spec.name for spec in PROCESSES]


# ------------------------------------------------------------------------- the topology


def test_the_commands_default_to_the_topologys_metrics_ports() -> None:
    ports = [s.metrics_port for s in PROCESSES if s.metrics_port is not None]
    base = GPU_WORKER.local_metrics_base
    assert base is not None
    local = [base + i for i in range(len(TIERS))]
    assert len(set(ports + local)) == len(ports + local), "two processes share a port"
    for spec in PROCESSES:
        command = commands()[spec.name]
        by_opt = {opt: p for p in command.params for opt in p.opts}
        if spec.metrics_port is None:
            assert "--metrics-port" not in by_opt, spec.name
            continue
        assert by_opt[spec.port_option].default == spec.metrics_port, spec.name
    assert commands()["up"].params[0].opts == ["--api-port"]
    assert commands()["up"].params[0].default == API.metrics_port


def test_a_spec_builds_its_command_line() -> None:
    assert process("expire").argv(extra=["--interval", "3"], port=0) == [
        "expire",
        "--interval",
        "3",
        "--metrics-port",
        "0",
    ]
    assert API.argv(port=8001) == ["api", "--port", "8001"]
    assert GPU_WORKER.argv(tier="basic") == ["gpu-worker", "--tier", "basic"]
    with pytest.raises(ValueError):
        GPU_WORKER.argv()
    with pytest.raises(ValueError):
        API.argv(tier="basic")


def test_up_runs_the_local_topology_one_gpu_worker_per_tier() -> None:
    def worker(tier: str, port: str) -> list[str]:
        ident = f"local-{tier}-cpu"
        return [
            "gpu-worker",
            "--tier",
            tier,
            "--device",
            "cpu",
            "--worker-id",
            ident,
            "--metrics-port",
            port,
        ]

    children = up_processes(8000, TIERS, "cpu")
    assert [(c.name, c.args) for c in children] == [
        ("api", ["api", "--port", "8000"]),
        ("relay", ["relay"]),
        ("project", ["project"]),
        ("scheduler", ["scheduler"]),
        ("settle", ["settle"]),
        ("expire", ["expire"]),
        ("notify", ["notify"]),
        ("webhooks", ["webhooks"]),
        ("gpu-worker-basic", worker("basic", "9110")),
        ("gpu-worker-high_performance", worker("high_performance", "9111")),
    ]
    run = {c.args[0] for c in children}
    assert run == {s.name for s in LOCAL_PROCESSES}
    for child in children:
        assert_accepts(child.args)


def test_chaos_runs_the_local_topology_under_the_names_its_fault_plans_replay() -> None:
    children = chaos_processes([28001, 28002], TIERS)
    # The names are the seeded fault plan's targets: a seed in RELIABILITY.md replays only
    # while they, and their order, stay the same.
    assert [c.name for c in children] == [
        "api-1",
        "api-2",
        "relay",
        "project",
        "scheduler",
        "settle",
        "expire",
        "gpu-worker-1",
        "gpu-worker-2",
    ]
    assert children[-1].args == [
        "gpu-worker",
        "--tier",
        "high_performance",
        "--device",
        "cpu",
        "--worker-id",
        "chaos-w2",
        "--metrics-port",
        "0",
    ]
    assert {c.args[0] for c in children} == {s.name for s in LOCAL_PROCESSES} - set(NOT_RUN)
    assert set(NOT_RUN) <= {s.name for s in LOCAL_PROCESSES}
    for child in children:
        assert_accepts(child.args)
        if child.args[0] != API.name:
            assert child.args[-2:] == ["--metrics-port", "0"]


# ------------------------------------------------------------------- what restates it


def readme_process_table() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("\n## Processes\n") :]
    section = section[: section.index("\n## ", 1)]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| command | `/metrics` |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        rows.append(cells)
    return rows


def test_the_readme_process_table_is_the_topology() -> None:
    rows = readme_process_table()
    invocations = [re.fullmatch(r"`pinksea ([^`]+)`", row[0]) for row in rows]
    assert all(invocations), [row[0] for row in rows]
    words = [m.group(1).split() for m in invocations if m]
    assert [w[0] for w in words] == [s.name for s in PROCESSES] + ["up"]
    for spec, row in zip(PROCESSES, rows, strict=False):
        ports = [int(n) for n in re.findall(r"\d+", row[1])]
        if spec.metrics_port is None:
            assert not ports, f"README: {spec.name} has no /metrics, not {row[1]!r}"
            continue
        assert ports[:1] == [spec.metrics_port], f"README: {spec.name} on {row[1]!r}"
        if spec.local_metrics_base is not None:
            assert spec.local_metrics_base in ports, f"README: {spec.name}'s `pinksea up` ports"
    for w in words:
        assert_accepts([t.strip("[]()") for t in w])


def test_every_pinksea_invocation_the_readme_shows_exists() -> None:
    text = (REPO / "README.md").read_text()
    for span in re.findall(r"`pinksea ([a-z][^`]*)`", text):
        words = [t.strip("[](),") for t in span.replace("\\|", " ").split()]
        words = [w.split("=")[0] for w in words if w and w != "|" and w != "..."]
        command, _ = resolve(words)
        assert command is not None
        assert_accepts(words)


def fargate_and_sidecar_commands() -> tuple[dict[str, list[str]], list[str]]:
    from tests.infra.hcl_config import load_config

    compute = load_config().locals("compute")
    services = {name: s["command"] for name, s in compute["services"].items()}
    return services, compute["lag_metric_command"]


def test_the_terraform_runs_the_topology() -> None:
    services, lag_metric = fargate_and_sidecar_commands()
    assert all(c[0] == "pinksea" for c in services.values())
    one_per_task = [s.name for s in PROCESSES if not s.per_tier and s.sidecar_of is None]
    assert sorted(c[1] for c in services.values()) == sorted(one_per_task)
    for command in services.values():
        assert_accepts(command[1:])
    # The sidecar: a topology process that runs in the task of the one it names.
    (sidecar,) = [s for s in PROCESSES if s.sidecar_of is not None]
    assert lag_metric[:2] == ["pinksea", sidecar.name]
    assert_accepts(lag_metric[1:])
    host = process(sidecar.sidecar_of or "")
    url = lag_metric[lag_metric.index("--queue-metrics-url") + 1]
    assert url == f"http://127.0.0.1:{host.metrics_port}/metrics"
    # The per-tier process: one container per GPU instance, from the user data.
    per_tier: list[ProcessSpec] = [s for s in PROCESSES if s.per_tier]
    assert per_tier == [GPU_WORKER]
    user_data = (REPO / "infra/terraform/modules/compute/gpu-user-data.sh.tftpl").read_text()
    assert "pinksea gpu-worker --tier ${tier}" in user_data
    dockerfile = (REPO / "infra/docker/Dockerfile.gpu-worker").read_text()
    assert re.search(rf"^EXPOSE {GPU_WORKER.metrics_port}$", dockerfile, re.M)
    assert f"127.0.0.1:{GPU_WORKER.metrics_port}/metrics" in dockerfile
