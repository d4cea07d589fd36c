"""Where the streaming pipeline stands: the relay's lag behind the event store, and each
projection's position and lag behind Kafka (``pinksea projections status``, the chaos run's
quiescence check)."""

from __future__ import annotations

from typing import Any

from infra.db import create_pool
from infra.settings import Settings


async def status_report(settings: Settings) -> dict[str, Any]:
    from projections.registry import ALL_PROJECTIONS
    from projections.replay import kafka_end_offsets

    pool = await create_pool(settings, max_size=2)
    try:
        newest = await pool.fetchval("SELECT coalesce(max(notification_id), 0) FROM pinksea_events")
        relayed = await pool.fetchval("SELECT coalesce(max(position), 0) FROM relay_positions")
        projections: dict[str, dict[str, int]] = {}
        for p in ALL_PROJECTIONS:
            ends = await kafka_end_offsets(settings, p.topics)
            rows = await pool.fetch(
                "SELECT topic, partition, next_offset FROM projection_positions "
                "WHERE projection = $1",
                p.name,
            )
            at = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
            state = await pool.fetchrow(
                "SELECT position, generation FROM projection_state WHERE projection = $1", p.name
            )
            projections[p.name] = {
                "position": state["position"] if state else 0,
                "generation": state["generation"] if state else 0,
                "lag_messages": sum(end - at.get(tp, 0) for tp, end in ends.items()),
            }
        relay_report = {"position": relayed, "lag_events": newest - relayed}
        return {"relay": relay_report, "projections": projections}
    finally:
        await pool.close()
