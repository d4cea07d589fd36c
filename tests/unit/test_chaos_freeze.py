"""The chaos run's freeze (SIGSTOP) stops the whole server, not only its first process:
PostgreSQL serves each connection from a process of its own, so a frozen postmaster alone would
leave every open connection answering."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from chaos.stack import ChaosStack


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


async def _states_become(pids: list[int], stopped: bool) -> set[str]:
    """The processes' states once a signal sent to them has been delivered (asynchronously:
    a busy machine schedules the delivery a moment later), bounded."""
    for _ in range(200):
        states = {_state(p) for p in pids}
        if states == {"T"} if stopped else "T" not in states:
            break
        await asyncio.sleep(0.02)
    return states


async def test_a_pause_stops_every_process_of_the_server_then_resumes_them(
    tmp_path: Path,
) -> None:
    # A server as infra/local/common.sh's spawn leaves it: the leader of its own session, with
    # forked children (two "backends"); a process outside the session is left alone.
    server = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300 & wait"], start_new_session=True)
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "postgres.pid").write_text(f"{server.pid}\n")
        stack = ChaosStack("t", stack_dir=tmp_path)
        for _ in range(100):  # the shell forks its children right after it starts
            pids = stack.session_pids("postgres")
            if len(pids) == 3:
                break
            await asyncio.sleep(0.05)
        assert sorted(pids)[0] == server.pid and len(pids) == 3
        assert bystander.pid not in pids

        pause = asyncio.create_task(stack.pause("postgres", 2.0))
        await asyncio.sleep(0)  # the pause sends its SIGSTOPs before its first await
        assert await _states_become(pids, stopped=True) == {"T"}
        assert _state(bystander.pid) != "T"
        await pause
        assert "T" not in await _states_become(pids, stopped=False)
    finally:
        for p in (server, bystander):
            p.kill()
            p.wait()
