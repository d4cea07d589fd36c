"""The connection bounds every PostgreSQL client of a process keeps (infra/db.py): their
defaults are the settings', and both clients are given them (libpq parameters it accepts, the
server's settings, asyncpg's socket options), checked against the local PostgreSQL; and what
the API answers when an address cannot be reached."""

from __future__ import annotations

import errno
import socket

import httpx
import pytest
from fastapi import FastAPI
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from api.problems import install_problem_handlers
from domain.application import PinkseaApplication
from eventstore.persistence import event_store_env
from infra.db import ConnectionBounds, create_pool
from infra.settings import Settings

BOUNDS = ConnectionBounds(
    connect_timeout_s=3, tcp_user_timeout_s=4, pool_timeout_s=2, command_timeout_s=7
)


def test_the_defaults_are_the_settings_defaults() -> None:
    assert ConnectionBounds.from_settings(Settings(_env_file=None)) == ConnectionBounds()


def test_libpq_accepts_every_parameter() -> None:
    parameters = BOUNDS.libpq_parameters()
    parsed = conninfo_to_dict(make_conninfo("host=127.0.0.1", **parameters))
    assert parsed["tcp_user_timeout"] == "4000"
    assert parsed["keepalives"] == "1"
    assert parsed["connect_timeout"] == "3"


def test_a_bound_outside_its_range_is_refused() -> None:
    with pytest.raises(AssertionError):
        ConnectionBounds(tcp_user_timeout_s=0.5)


@pytest.mark.integration
def test_the_event_store_connections_keep_the_bounds_on_both_ends(database_url: str) -> None:
    app = PinkseaApplication(env=event_store_env(database_url, pool_size=1, bounds=BOUNDS))
    try:
        datastore = app.factory.datastore  # type: ignore[attr-defined]
        assert datastore.pool.timeout == 2
        with datastore.get_connection() as conn:
            assert conn.info.get_parameters()["tcp_user_timeout"] == "4000"
            assert conn.info.get_parameters()["keepalives_idle"] == "2"
            server = conn.execute("show tcp_user_timeout").fetchone()
            assert server is not None and server["tcp_user_timeout"] == "4000"
    finally:
        app.close()


@pytest.mark.integration
async def test_the_asyncpg_connections_keep_the_bounds_on_both_ends(database_url: str) -> None:
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        db_connect_timeout_s=3,
        db_tcp_user_timeout_s=4,
        db_pool_timeout_s=2,
        db_command_timeout_s=7,
    )
    pool = await create_pool(settings, max_size=1)
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("show tcp_user_timeout") == "4000"
            sock = conn.tcp_socket()
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 4000
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
    finally:
        await pool.close()


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (OSError(errno.EHOSTUNREACH, "Connect call failed ('10.213.0.2', 15432)"), 503),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), 503),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), 503),
        (FileNotFoundError(errno.ENOENT, "No such file or directory"), 500),
    ],
)
async def test_an_unreachable_database_address_is_503_other_os_errors_500(
    error: OSError, status: int
) -> None:
    # A new connection across a partition fails with "No route to host" once the address's
    # neighbour entry is stale: a plain OSError, not a ConnectionError (it was a 500).
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/fails")
    async def fails() -> None:
        raise error

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        answer = await client.get("/fails")
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    if status == 503:
        assert int(answer.headers["retry-after"]) >= 1
