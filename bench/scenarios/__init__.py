"""One module per scenario: ``NAME``, ``KEYS``, ``SIZES`` and ``run(bench) -> ScenarioResult``.

``SCENARIOS`` is the run order (``python -m bench`` runs them in it, latest.json and
docs/performance.md list them in it). A unit test checks that every module here is
listed and declares its keys and sizes.
"""

SCENARIOS = [
    "limiter",
    "round_trips",
    "throughput",
    "invalidation",
    "hot_project",
    "realtime",
    "overload",
    "local_deny",
    "auth_hashing",
    "owner_rows",
    "jobs",
    "peer",
    "isolation",
    "cells",
]
