"""The command side for the workflows that consume Kafka and issue commands (the settler).

Its recorder also keeps the consumer's positions (table pinksea_tracking), written atomically
with the events the commands save, so a redelivered report is recognised by its position.
"""

from __future__ import annotations

from eventsourcing.persistence import ProcessRecorder

from domain.application import PinkseaApplication


class TrackingPinkseaApplication(PinkseaApplication):
    """The same application for a consumer of Kafka (the settler): its recorder also keeps the
    consumer's positions (table pinksea_tracking), written atomically with the events."""

    name = "Pinksea"  # the same event store as the command side, not a store of its own

    def construct_recorder(self) -> ProcessRecorder:
        return self.factory.process_recorder()

    def consumed_up_to(self, source: str) -> int | None:
        recorder = self.recorder
        assert isinstance(recorder, ProcessRecorder)
        return recorder.max_tracking_id(source)
