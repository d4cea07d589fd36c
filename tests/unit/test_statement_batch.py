"""Statement batches keep each aggregate's order while merging everything else."""

from __future__ import annotations

from uuid import uuid4

from projections.batching import StatementBatch


def test_one_kind_of_statement_is_one_round_trip() -> None:
    batch = StatementBatch()
    accounts = [uuid4() for _ in range(3)]
    for n in range(30):
        batch.add(accounts[n % 3], "move", (n,))
    assert batch.round_trips == 1
    assert len(batch) == 30
    assert batch.groups[0][1] == [(n,) for n in range(30)]  # stream order kept


def test_each_aggregate_keeps_its_order_across_kinds() -> None:
    a, b, c = uuid4(), uuid4(), uuid4()
    batch = StatementBatch()
    stream = [
        (a, "submit", 1),
        (a, "accept", 2),
        (b, "submit", 3),  # joins the first submit group: b has nothing earlier
        (b, "accept", 4),
        (a, "submit", 5),  # a's accept is in a later group: a new submit group after it
        (c, "accept", 6),  # joins the accept group
    ]
    for aggregate, sql, n in stream:
        batch.add(aggregate, sql, (n,))
    assert [(sql, [r[0] for r in rows]) for sql, rows in batch.groups] == [
        ("submit", [1, 3]),
        ("accept", [2, 4, 6]),
        ("submit", [5]),
    ]
    # Flattened in run order, every aggregate's statements are in stream order.
    run_order = [r[0] for _, rows in batch.groups for r in rows]
    for aggregate in (a, b, c):
        mine = [n for agg, _, n in stream if agg == aggregate]
        assert [n for n in run_order if n in mine] == mine
