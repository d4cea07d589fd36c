"""A private local stack for the chaos run: PostgreSQL, Redis, Kafka and S3 on their own ports
and data directories, started and stopped with the same ``infra/local`` scripts as
``make services``. The fault injector restarts these, never the developer's stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from chaos.disk import fill
from infra.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = REPO_ROOT / "infra" / "local"
SERVICES = ("postgres", "redis", "s3", "kafka")


class StackError(RuntimeError):
    pass


def default_stack_dir() -> Path:
    shared = Path(os.environ.get("PINKSEA_STACK_DIR", Path.home() / ".pinksea-stack"))
    return shared.with_name(shared.name + "-chaos")


@dataclass
class ChaosStack:
    run_id: str
    stack_dir: Path = field(default_factory=default_stack_dir)
    pg_port: int = 25432
    redis_port: int = 26379
    kafka_port: int = 29092
    kafka_controller_port: int = 29093
    s3_port: int = 29000  # SeaweedFS; its internal servers on the 14 ports above
    # The local S3's one identity (infra/local/s3.sh), which every process of the run signs with.
    s3_access_key_id: str = "pinksea-chaos"
    s3_secret_access_key: str = "chaos-s3-secret"
    log: Path | None = None  # where the scripts' output goes (default: inherited)
    services: tuple[str, ...] = SERVICES  # infra/local/<name>.sh, started in this order
    # A tmpfs (chaos/disk.py) holding PostgreSQL's data directory, WAL included, for the
    # disk-full fault; None: the data directory stays where infra/local/postgres.sh puts it.
    pg_disk: Path | None = None
    pg_disk_mib: int = 0

    @property
    def database(self) -> str:
        return f"chaos_{self.run_id}"

    @property
    def database_url(self) -> str:
        return f"postgresql://pinksea:pinksea@127.0.0.1:{self.pg_port}/{self.database}"

    def script_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PINKSEA_STACK_DIR": str(self.stack_dir),
            "PG_PORT": str(self.pg_port),
            "REDIS_PORT": str(self.redis_port),
            "KAFKA_PORT": str(self.kafka_port),
            "KAFKA_CONTROLLER_PORT": str(self.kafka_controller_port),
            "S3_PORT": str(self.s3_port),
            "PINKSEA_S3_ACCESS_KEY_ID": self.s3_access_key_id,
            "PINKSEA_S3_SECRET_ACCESS_KEY": self.s3_secret_access_key,
            "PINKSEA_PYTHON": sys.executable,
            "PINKSEA_START_TIMEOUT": "120",
            **({"PG_DATA_DIR": str(self.pg_disk / "data")} if self.pg_disk else {}),
        }

    def pinksea_env(self) -> dict[str, str]:
        """The environment of every Pinksea process of the run: this stack, and a database,
        topic prefix, key prefix and bucket of its own (a second run never sees the first)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PINKSEA_")}
        env.update(
            PINKSEA_DATABASE_URL=self.database_url,
            PINKSEA_REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            PINKSEA_REDIS_KEY_PREFIX=f"chaos{self.run_id}:",
            PINKSEA_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{self.kafka_port}",
            PINKSEA_KAFKA_TOPIC_PREFIX=f"chaos{self.run_id}.",
            PINKSEA_S3_ENDPOINT_URL=f"http://127.0.0.1:{self.s3_port}",
            PINKSEA_S3_BUCKET=f"pinksea-chaos-{self.run_id}",
            PINKSEA_S3_ACCESS_KEY_ID=self.s3_access_key_id,
            PINKSEA_S3_SECRET_ACCESS_KEY=self.s3_secret_access_key,
            PINKSEA_DEV_JWT_ENABLED="true",
            PINKSEA_LOG_JSON="false",
            PINKSEA_LOG_LEVEL="WARNING",
        )
        for keep in ("PINKSEA_DEV_JWT_KEY_PATH", "PINKSEA_STRIPE_API_BASE", "PINKSEA_PYTHON"):
            if keep in os.environ:
                env[keep] = os.environ[keep]
        return env

    def settings(self) -> Settings:
        """What the run's processes read from :meth:`pinksea_env`, for the harness itself."""
        env = self.pinksea_env()
        # Strings, as in the environment: pydantic parses them into each field's type.
        values: dict[str, Any] = {
            k.removeprefix("PINKSEA_").lower(): v
            for k, v in env.items()
            if k.startswith("PINKSEA_")
        }
        return Settings(**values)

    # ------------------------------------------------------------------------- lifecycle

    async def script(self, service: str, action: str) -> None:
        out = self.log.open("ab") if self.log else None
        try:
            proc = await asyncio.create_subprocess_exec(
                str(SCRIPTS / f"{service}.sh"),
                action,
                env=self.script_env(),
                stdout=out,
                stderr=out,
            )
            code = await proc.wait()
        finally:
            if out:
                out.close()
        if code != 0:
            where = f" (see {self.log})" if self.log else ""
            raise StackError(f"infra/local/{service}.sh {action} failed with {code}{where}")

    async def start(self) -> None:
        for service in self.services:
            await self.script(service, "start")
        conn = await asyncpg.connect(self.database_url.rsplit("/", 1)[0] + "/postgres")
        try:
            await conn.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await conn.close()

    async def stop(self) -> None:
        for service in reversed(self.services):
            await self.script(service, "stop")

    def pid(self, service: str) -> int:
        return int((self.stack_dir / "run" / f"{service}.pid").read_text().strip())

    # ------------------------------------------------------------------------- faults

    async def crash_and_restart(self, service: str, sig: signal.Signals, down_s: float) -> None:
        """Send ``sig`` to the server, wait for it to die, keep it down ``down_s``, start it."""
        pid = self.pid(service)
        os.kill(pid, sig)
        deadline = time.monotonic() + 60
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(down_s)
        await self.script(service, "start")

    async def restart_postgres(self, down_s: float) -> None:
        # SIGQUIT is PostgreSQL's immediate shutdown: no checkpoint, crash recovery at start.
        await self.crash_and_restart("postgres", signal.SIGQUIT, down_s)

    async def restart_kafka(self, down_s: float) -> None:
        # kill -9 of the only broker: unflushed page cache survives (same host), the log is
        # recovered at start, exactly as after a process crash on a broker machine.
        await self.crash_and_restart("kafka", signal.SIGKILL, down_s)

    async def restart_s3(self, down_s: float) -> None:
        # kill -9 of SeaweedFS (master, volume server, filer and gateway are one process): what
        # it acknowledged is in its volume files and filer store, so every image must survive.
        await self.crash_and_restart("s3", signal.SIGKILL, down_s)

    async def fill_postgres_disk(self, full_s: float) -> None:
        """PostgreSQL out of disk space for ``full_s``: a ballast file takes every free byte of
        its disk, then goes. Writes that need a new block fail meanwhile (a data file's with an
        error the API answers 503 for; a WAL segment's with a PANIC, after which the server
        cannot finish crash recovery without space and stops), so once the space is back the
        server is started if it stopped, as an operator would after growing the volume."""
        assert self.pg_disk is not None, "the disk-full fault needs the data directory on a tmpfs"
        ballast = self.pg_disk / "ballast"
        try:
            await asyncio.to_thread(fill, ballast, self.pg_disk_mib)
            await asyncio.sleep(full_s)
        finally:
            ballast.unlink(missing_ok=True)
        await self.script("postgres", "start")  # idempotent: a live server is left as it is

    def pg_disk_used_mib(self) -> int | None:
        """How much of the data directory's tmpfs is in use (the run's high-water mark is
        close to its end's: nothing is deleted during a run)."""
        if self.pg_disk is None:
            return None
        st = os.statvfs(self.pg_disk)
        return (st.f_blocks - st.f_bfree) * st.f_frsize >> 20

    def session_pids(self, service: str) -> list[int]:
        """The server and every process it forked: the scripts start each server as the leader
        of its own session (infra/local/common.sh's spawn), so they are the session's members.
        PostgreSQL is a postmaster and a process per connection; Kafka, Redis and SeaweedFS one
        process each."""
        leader = self.pid(service)
        pids = [leader]
        for entry in Path("/proc").iterdir():  # bounded: the host's process table
            if not entry.name.isdigit() or int(entry.name) == leader:
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # exited meanwhile
                continue
            # Fields after the command name, which is in parentheses and may hold spaces:
            # state ppid pgrp session ...
            if int(stat.rpartition(")")[2].split()[3]) == leader:
                pids.append(int(entry.name))
        return pids

    async def pause(self, service: str, seconds: float) -> None:
        """SIGSTOP of the whole server, every process of it: connections stay open and hang (the
        worst case for clients, worse than refused), then SIGCONT."""
        pids = self.session_pids(service)
        assert pids, service
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
