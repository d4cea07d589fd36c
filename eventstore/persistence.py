"""Environment for the eventsourcing library's PostgreSQL persistence, from a DSN."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from eventsourcing.utils import get_topic

from eventstore.group_commit import GroupCommitApplicationRecorder, GroupCommitProcessRecorder


def event_store_env(
    database_url: str, *, pool_size: int = 10, group_commit: bool = True
) -> dict[str, str]:
    """``PinkseaApplication(env=event_store_env(settings.database_url))`` stores its events in
    that database (tables ``pinksea_events`` and ``pinksea_snapshots``, created if missing).
    With ``group_commit`` (the default) concurrent saves share transactions
    (eventstore/group_commit.py); without it each save is its own, as the library does."""
    url = urlsplit(database_url)
    if url.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {database_url!r}")
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": url.path.lstrip("/"),
        "POSTGRES_HOST": url.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(url.port or 5432),
        "POSTGRES_USER": unquote(url.username or ""),
        "POSTGRES_PASSWORD": unquote(url.password or ""),
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": "0",
        # Writers queue on the table lock that keeps notification ids in commit order.
        "POSTGRES_LOCK_TIMEOUT": "10",
        "CREATE_TABLE": "y",
    }
    if group_commit:
        env["APPLICATION_RECORDER_TOPIC"] = get_topic(GroupCommitApplicationRecorder)
        env["PROCESS_RECORDER_TOPIC"] = get_topic(GroupCommitProcessRecorder)
    return env
