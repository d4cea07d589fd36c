"""The ``pinksea`` console script (``pyproject.toml``: ``cli.main:app``; ``python -m cli``).

It assembles the app: :mod:`cli.app` declares it, and importing each command module attaches
that module's commands. Where a command lives:

- ``cli/processes.py``: every long-running process (api, relay, project, scheduler, settle,
  expire, notify, gpu-worker, lag-metric), one per container in production; which of them run,
  on which ``/metrics`` ports, is declared once in ``cli/topology.py``;
- ``cli/up.py``: ``pinksea up``, all of the processes in the foreground for local use;
- ``cli/ops.py``: operator tools (doctor, db, kafka, projections, events, dev-token);
- ``cli/ledger.py``: ``pinksea ledger ...``, the auditor's tools;
- ``cli/presets.py``: ``pinksea presets sync | show``, the system style presets in S3;
- ``cli/demo.py``: ``pinksea demo``, the whole flow against ``pinksea up``.
"""

from __future__ import annotations

# Imported for their effect: each attaches its commands to ``app``, in this order in --help.
# isort: off
import cli.processes
import cli.up
import cli.ops
import cli.ledger
import cli.presets
import cli.demo  # noqa: F401

# isort: on
from cli.app import app

__all__ = ["app"]
