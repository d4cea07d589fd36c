"""Workflows: processes that read the domain's event streams and act on the world outside it.

Projections (projections/) turn events into tables; a workflow turns events into effects that
cannot be rolled back (an e-mail), so each records what it did, keyed by the event's id, and
commits its Kafka offsets only after that record.
"""
