"""Environment for the eventsourcing library's PostgreSQL persistence, from a DSN."""

from __future__ import annotations

import json
import math
from urllib.parse import unquote, urlsplit

from eventsourcing.persistence import Environment, EnvType
from eventsourcing.postgres import PostgresFactory
from eventsourcing.utils import get_topic

from eventstore.group_commit import GroupCommitApplicationRecorder, GroupCommitProcessRecorder
from infra.db import ConnectionBounds

# The libpq parameters of every connection the pool opens (JSON); the library has no setting
# for them.
LIBPQ_PARAMETERS = "POSTGRES_LIBPQ_PARAMETERS"


class BoundedPostgresFactory(PostgresFactory):
    """The library's PostgreSQL persistence, its connections opened with the libpq parameters
    of ``LIBPQ_PARAMETERS``: a connect timeout, TCP keepalives and ``tcp_user_timeout``, so
    that a connection across a network partition fails within the bounds (infra/db.py) instead
    of waiting for the kernel's retransmission timeout."""

    def __init__(self, env: Environment | EnvType | None):
        super().__init__(env)
        parameters = json.loads(self.env.get(LIBPQ_PARAMETERS) or "{}")
        assert isinstance(parameters, dict), parameters
        # psycopg_pool passes its kwargs to every connect, reconnections included; the pool
        # opens on first use, after this.
        kwargs = self.datastore.pool.kwargs
        assert isinstance(kwargs, dict)
        kwargs.update(parameters)


def event_store_env(
    database_url: str,
    *,
    pool_size: int = 10,
    group_commit: bool = True,
    bounds: ConnectionBounds | None = None,
) -> dict[str, str]:
    """``PinkseaApplication(env=event_store_env(settings.database_url))`` stores its events in
    that database (tables ``pinksea_events`` and ``pinksea_snapshots``, created if missing).
    With ``group_commit`` (the default) concurrent saves share transactions
    (eventstore/group_commit.py); without it each save is its own, as the library does.
    Its connections keep ``bounds`` (default: the settings' defaults; infra/db.py)."""
    bounds = bounds or ConnectionBounds()
    url = urlsplit(database_url)
    if url.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {database_url!r}")
    env = {
        "PERSISTENCE_MODULE": get_topic(BoundedPostgresFactory),
        "POSTGRES_DBNAME": url.path.lstrip("/"),
        "POSTGRES_HOST": url.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(url.port or 5432),
        "POSTGRES_USER": unquote(url.username or ""),
        "POSTGRES_PASSWORD": unquote(url.password or ""),
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": "0",
        # Writers queue on the table lock that keeps notification ids in commit order.
        "POSTGRES_LOCK_TIMEOUT": "10",
        # The library's name for the pool's wait for a connection (whole seconds).
        "POSTGRES_CONNECT_TIMEOUT": str(math.ceil(bounds.pool_timeout_s)),
        LIBPQ_PARAMETERS: json.dumps(bounds.libpq_parameters()),
        "CREATE_TABLE": "y",
    }
    if group_commit:
        env["APPLICATION_RECORDER_TOPIC"] = get_topic(GroupCommitApplicationRecorder)
        env["PROCESS_RECORDER_TOPIC"] = get_topic(GroupCommitProcessRecorder)
    return env
