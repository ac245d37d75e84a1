"""Real gateway processes answer health and readiness (the foundation, served).

Settings, migrations and the provisioning CLI are tested in tests/db/test_foundation.py.
"""

from __future__ import annotations

from typing import Any

import httpx


def test_cluster_serves_health_and_readyz(gateway_cluster: Any) -> None:
    cluster = gateway_cluster(2)
    for url in cluster.urls:
        health = httpx.get(url + "/v1/inhouse/db/health").json()
        assert health["status"] == "healthy" and health["service"] == "inhouse-gateway"
        assert health["features"] == {
            "query": True,
            "schema": True,
            "rateLimit": True,
            "quotas": True,
        }
        assert httpx.get(url + "/readyz").status_code == 200
        assert httpx.get(url + "/healthz").status_code == 200
        missing = httpx.get(url + "/nope")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"


def test_readyz_turns_503_when_the_database_stops(gateway_cluster: Any, pg_control: Any) -> None:
    cluster = gateway_cluster(1)
    url = cluster.urls[0]
    assert httpx.get(url + "/readyz").status_code == 200
    pg_control.stop()
    try:
        response = httpx.get(url + "/readyz", timeout=10)
        assert response.status_code == 503
        assert response.json()["checks"]["database"] == "down"
    finally:
        pg_control.start()
    cluster.wait_ready(cluster.instances[0], timeout=15)
