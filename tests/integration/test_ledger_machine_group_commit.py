"""The ledger's hypothesis state machine (tests/unit/test_credit_account_stateful.py) with its
events saved to, and read back from, PostgreSQL through the group-committing recorder.

The machine is the unit test's, unchanged: only its store differs. Every example starts from
an empty account of the same user, so each example's rows are deleted when it ends (in this
test's own database, which no other test reads).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from psycopg import sql

from domain.application import PinkseaApplication
from eventstore.group_commit import GroupCommitApplicationRecorder
from eventstore.persistence import event_store_env
from tests.unit.test_credit_account_stateful import LedgerMachine

pytestmark = pytest.mark.integration


class LedgerMachineOnPostgres(LedgerMachine):
    database_url: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()  # an in-memory store, holding the account's first events
        opened = list(self.app.events.get(self.account.id))
        self.app = PinkseaApplication(env=event_store_env(self.database_url, pool_size=2))
        assert isinstance(self.app.recorder, GroupCommitApplicationRecorder)
        self.app.save(*opened)

    def teardown(self) -> None:
        self.app.close()
        with psycopg.connect(self.database_url) as conn:
            for table in ("pinksea_events", "pinksea_snapshots"):
                conn.execute(
                    sql.SQL("DELETE FROM {} WHERE originator_id = %s").format(
                        sql.Identifier(table)
                    ),
                    (self.account.id,),
                )


@pytest.fixture
def machine_database(database_url: str) -> Iterator[str]:
    base, _, name = database_url.rpartition("/")
    own = f"{name}_ledger_machine"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(own)))
    try:
        yield f"{base}/{own}"
    finally:
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(own))
            )


def test_the_ledger_state_machine_holds_on_postgres_with_group_commit(
    machine_database: str,
) -> None:
    PinkseaApplication(env=event_store_env(machine_database, pool_size=1)).close()  # tables
    LedgerMachineOnPostgres.database_url = machine_database
    run_state_machine_as_test(
        LedgerMachineOnPostgres,
        settings=settings(
            max_examples=40,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
