"""The chaos suite: the whole backend as separate processes, under load, while a seeded fault
injector kills processes and restarts Kafka, PostgreSQL and Redis; then the ledger must verify
and reconcile with zero discrepancies.

- ``stack``: a private local stack (own ports and data), so restarting PostgreSQL or Kafka
  never disturbs the developer's stack or another test run;
- ``processes``: the Pinksea processes, supervised like ``pinksea up`` (a dead one restarts);
- ``faults``: the seeded, replayable fault plan and its injector;
- ``load``: the bounded load generator (users, jobs, cancellations, grants, Stripe webhooks);
- ``outcome``: quiescence, then verify, reconcile and the chaos-specific checks;
- ``run``: the orchestration and the summary (``make chaos``, ``pinksea chaos``).
"""
