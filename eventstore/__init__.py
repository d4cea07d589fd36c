"""The event store: its tables, the one decoding of a stored event, the relay to Kafka, and
the public event contract (docs/ARCHITECTURE.md)."""
