"""asyncpg pools for the read side and the streaming processes, and the bounds every
PostgreSQL connection of a process keeps (asyncpg here, the event store's psycopg pool in
eventstore/persistence.py).

Without bounds a connection whose packets are dropped (a network partition, not a refusal)
waits for the kernel's TCP retransmission timeout, about 15 minutes, and so does the request
that uses it. With them (tests/faults/test_partition.py):

- a new connection gives up after ``connect_timeout_s``;
- an established one is dropped by the kernel once data it sent has gone unacknowledged for
  ``tcp_user_timeout_s`` (``TCP_USER_TIMEOUT``), and an idle one is probed by TCP keepalives
  within the same time; the server is asked for the same of its end (``tcp_user_timeout`` and
  the ``tcp_keepalives_*`` settings), so that it ends the sessions of a client it cannot reach
  and their locks go with them;
- a caller waits at most ``pool_timeout_s`` for a pooled connection of the event store, per
  attempt: the eventsourcing library makes up to ``EVENT_STORE_ATTEMPTS`` of each read and
  write, so a command waits at most about ``tcp_user_timeout_s`` + 9 x (``pool_timeout_s`` +
  0.2 s), 30 s with the defaults, before the API answers 503;
- an asyncpg statement waits at most ``command_timeout_s`` for its answer (a server that is
  reachable but frozen acknowledges packets, so only this bound ends the wait).

Each error is one the API answers 503 with Retry-After (api/problems.py).
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass
from typing import Any

import asyncpg

from infra.observability.instrument import track_pool
from infra.settings import Settings

EVENT_STORE_ATTEMPTS = 10  # the library's @retry of each recorder method
KEEPALIVE_PROBES = 3  # unanswered keepalive probes before the kernel drops an idle connection


@dataclass(frozen=True)
class ConnectionBounds:
    """How long a PostgreSQL connection may wait on the network. The defaults are the
    settings' (tests/faults/test_connection_bounds.py holds them equal)."""

    connect_timeout_s: float = 5.0
    tcp_user_timeout_s: float = 10.0
    pool_timeout_s: float = 2.0
    command_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("connect_timeout_s", "tcp_user_timeout_s", "pool_timeout_s"):
            value = getattr(self, name)
            assert 1 <= value <= 600, f"{name} = {value}: between 1 s and 10 min"
        assert self.command_timeout_s >= 1, self.command_timeout_s

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionBounds:
        return cls(
            connect_timeout_s=settings.db_connect_timeout_s,
            tcp_user_timeout_s=settings.db_tcp_user_timeout_s,
            pool_timeout_s=settings.db_pool_timeout_s,
            command_timeout_s=settings.db_command_timeout_s,
        )

    @property
    def tcp_user_timeout_ms(self) -> int:
        return int(self.tcp_user_timeout_s * 1000)

    @property
    def keepalive_idle_s(self) -> int:
        """Idle seconds before the first probe: half the bound, the probes in the other half."""
        return max(1, int(self.tcp_user_timeout_s / 2))

    @property
    def keepalive_interval_s(self) -> int:
        return max(1, int(self.tcp_user_timeout_s / (2 * KEEPALIVE_PROBES)))

    def server_settings(self) -> dict[str, str]:
        """The server's end of the same bounds (PostgreSQL settings any session may set)."""
        return {
            "tcp_user_timeout": str(self.tcp_user_timeout_ms),
            "tcp_keepalives_idle": str(self.keepalive_idle_s),
            "tcp_keepalives_interval": str(self.keepalive_interval_s),
            "tcp_keepalives_count": str(KEEPALIVE_PROBES),
        }

    def libpq_parameters(self) -> dict[str, str]:
        """libpq connection parameters (psycopg) for the client's end, and the server's."""
        options = " ".join(f"-c {name}={value}" for name, value in self.server_settings().items())
        return {
            # libpq takes whole seconds (and treats 1 as 2).
            "connect_timeout": str(math.ceil(self.connect_timeout_s)),
            "keepalives": "1",
            "keepalives_idle": str(self.keepalive_idle_s),
            "keepalives_interval": str(self.keepalive_interval_s),
            "keepalives_count": str(KEEPALIVE_PROBES),
            "tcp_user_timeout": str(self.tcp_user_timeout_ms),
            "options": options,
        }


class _BoundedConnection(asyncpg.Connection):
    """An asyncpg connection whose TCP socket keeps the process's bounds: asyncpg has no
    parameters for keepalives or ``TCP_USER_TIMEOUT``, so they are set on the socket it
    connected (a Unix socket has none)."""

    bounds = ConnectionBounds()

    def __init__(self, protocol: Any, transport: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(protocol, transport, *args, **kwargs)
        self._tcp_socket: socket.socket | None = None
        sock = transport.get_extra_info("socket")
        if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        self._tcp_socket = sock
        bounds = self.bounds
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, bounds.keepalive_idle_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, bounds.keepalive_interval_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, bounds.tcp_user_timeout_ms)

    def tcp_socket(self) -> socket.socket | None:
        """The connection's TCP socket (None over a Unix socket), for inspection."""
        return self._tcp_socket


def bounded_connection_class(bounds: ConnectionBounds) -> type[asyncpg.Connection]:
    """A connection class for asyncpg's ``connection_class`` that keeps ``bounds``."""
    return type("BoundedConnection", (_BoundedConnection,), {"bounds": bounds})


async def create_pool(
    settings: Settings, *, read_only: bool = False, **overrides: object
) -> asyncpg.Pool:
    dsn = settings.effective_read_database_url if read_only else settings.database_url
    bounds = ConnectionBounds.from_settings(settings)
    options: dict[str, object] = {
        "min_size": 1,
        "max_size": settings.db_pool_size,
        "timeout": bounds.connect_timeout_s,
        "command_timeout": bounds.command_timeout_s,
        "server_settings": bounds.server_settings(),
        "connection_class": bounded_connection_class(bounds),
    }
    options.update(overrides)
    pool = await asyncpg.create_pool(dsn, **options)
    assert pool is not None
    # pinksea_db_pool_in_use{pool} and its siblings, read at each scrape of /metrics.
    return track_pool(pool, "read" if read_only else "primary")
