"""A throwaway PostgreSQL server for one fault test: its own data directory (on a tmpfs the test
mounts, so that the test can fill it), its own address and port, started and stopped here.

The fault tests break the server's disk or network, which must never touch the shared local
stack (``make services``). As root the server runs as the ``postgres`` OS user, as
infra/local/postgres.sh does (postgres refuses to run as root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

import chaos.disk

START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 15
OS_USER = "postgres"


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    return Path(found[-1]).parent if found else None


def _version(path: str) -> int:
    part = path.split("/")[4]
    return int(part) if part.isdigit() else 0


def require_root_and_postgres() -> Path:
    """Skip (with the reason) where the fault tests cannot run: they mount file systems and
    make network namespaces, which needs root, and they start their own PostgreSQL."""
    if os.geteuid() != 0:
        pytest.skip("fault tests need root (tmpfs mounts, network namespaces)")
    binaries = pg_bin()
    if binaries is None:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is missing: postgres cannot be run as its own user")
    try:
        import pwd

        pwd.getpwnam(OS_USER)
    except KeyError:
        pytest.skip(f"no {OS_USER!r} OS user to own the private cluster")
    return binaries


@contextlib.contextmanager
def tmpfs(size_mib: int) -> Iterator[Path]:
    """A tmpfs of ``size_mib`` (chaos/disk.py): a disk the test can fill without filling the
    host's. Skips when mounting is not allowed (an unprivileged container)."""
    with contextlib.ExitStack() as stack:
        try:
            path = stack.enter_context(chaos.disk.tmpfs(size_mib, prefix="pinksea-faults-"))
        except chaos.disk.DiskUnavailable as e:
            pytest.skip(str(e))
        yield path


def as_postgres(*argv: str) -> list[str]:
    return ["setpriv", f"--reuid={OS_USER}", f"--regid={OS_USER}", "--init-groups", *argv]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class PrivatePostgres:
    host: str
    port: int
    data_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://pinksea:pinksea@{self.host}:{self.port}/{database}"

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-3000:]
        return ""


@contextlib.contextmanager
def private_postgres(
    binaries: Path,
    data_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    wrap: tuple[str, ...] = (),
) -> Iterator[PrivatePostgres]:
    """initdb ``data_dir`` and run a server on ``host:port`` until the block ends, its command
    prefixed by ``wrap`` (``ip netns exec NS``: the server inside a network namespace). Trust
    authentication: the server listens only on a loopback or veth address of this machine."""
    if port is None:
        # A free port of this namespace; inside another one (``wrap``) its own ports are all
        # free, so any fixed one does.
        port = free_port(host) if not wrap else 15432
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.chown(data_dir.parent, OS_USER, OS_USER)
    # 1 MiB WAL segments: a fresh cluster fits a small tmpfs with room for the test's data.
    made = subprocess.run(
        as_postgres(
            str(binaries / "initdb"),
            "-D",
            str(data_dir),
            "-U",
            "pinksea",
            "--auth=trust",
            "--wal-segsize=1",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ),
        capture_output=True,
        text=True,
        cwd="/",
        timeout=60,
    )
    if made.returncode != 0:
        raise RuntimeError(f"initdb failed:\n{made.stdout}{made.stderr}")
    with (data_dir / "pg_hba.conf").open("a") as hba:
        hba.write("host all all 10.0.0.0/8 trust\n")  # the partition test's veth addresses
    log = data_dir.parent / f"postgres-{port}.log"
    log.touch()
    shutil.chown(log, OS_USER, OS_USER)
    out = log.open("ab")
    process = subprocess.Popen(
        [
            *wrap,
            *as_postgres(
                str(binaries / "postgres"),
                "-D",
                str(data_dir),
                "-p",
                str(port),
                "-c",
                f"listen_addresses={host}",
                "-c",
                "unix_socket_directories=",
                "-c",
                "max_connections=100",
                "-c",
                "min_wal_size=2MB",
                "-c",
                "max_wal_size=16MB",
            ),
        ],
        stdout=out,
        stderr=out,
        cwd="/",
    )
    out.close()
    server = PrivatePostgres(host, port, data_dir, process, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the private PostgreSQL exited:\n{server.log_tail()}")
            try:
                with psycopg.connect(server.url(), connect_timeout=2) as conn:
                    conn.execute("select 1")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the private PostgreSQL did not answer in {START_TIMEOUT_S} s:\n"
                        f"{server.log_tail()}"
                    ) from None
                time.sleep(0.2)
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute("create database pinksea")
        yield server
    finally:
        if process.poll() is None:
            process.terminate()  # SIGTERM: smart shutdown; SIGINT below if clients hold it up
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=2)
            if process.poll() is None:
                process.send_signal(2)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)
