"""Password hashing never runs on the event loop (gateway/auth/passwords.py): every hash
and verification of sign-up and sign-in, for a right, a wrong and an unknown password,
runs on the hasher's own threads. How much a select slows down while sign-ins hash is a
speed figure: the bench's ``auth_hashing`` scenario measures it (docs/performance.md)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.auth import passwords
from gateway.http.app import create_app
from gateway.settings import Settings

AUTH = "/v1/inhouse/auth"


class ThreadRecorder:
    """The real argon2 hasher, noting the thread of each call."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.threads: list[str] = []

    def hash(self, password: str) -> str:
        self.threads.append(threading.current_thread().name)
        return self.real.hash(password)

    def verify(self, stored: str, password: str) -> bool:
        self.threads.append(threading.current_thread().name)
        return self.real.verify(stored, password)

    def check_needs_rehash(self, stored: str) -> bool:
        return self.real.check_needs_rehash(stored)


@pytest.fixture
def client(pg_url: str, make_project: Callable[..., dict[str, Any]]) -> Iterator[Any]:
    settings = Settings.from_env(
        {
            "DATABASE_URL": pg_url,
            "GATEWAY_INSTANCE_ID": "hash-threads",
            "GATEWAY_MAINTENANCE_INTERVAL_S": "3600",
        }
    )
    project = make_project()
    with TestClient(create_app(settings)) as test_client:
        yield test_client, project


def test_every_hash_and_verification_runs_on_the_hashers_threads(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    test_client, project = client
    recorder = ThreadRecorder(passwords.ARGON2)
    monkeypatch.setattr(passwords, "ARGON2", recorder)
    headers = {"x-api-key": project["public_key"]}
    email = f"user-{uuid.uuid4().hex[:10]}@example.test"

    def post(path: str, body: dict[str, str]) -> int:
        return test_client.post(AUTH + path, json=body, headers=headers).status_code

    assert post("/sign-up", {"email": email, "password": "a long password"}) == 200
    assert post("/sign-in", {"email": email, "password": "a long password"}) == 200
    assert post("/sign-in", {"email": email, "password": "the wrong one"}) == 401
    unknown = f"nobody-{uuid.uuid4().hex[:10]}@example.test"
    assert post("/sign-in", {"email": unknown, "password": "any password"}) == 401

    # sign-up hashes, each sign-in verifies (the unknown email against the dummy hash,
    # which may be made on the first call)
    assert len(recorder.threads) >= 4, recorder.threads
    assert all(name.startswith("auth-hash") for name in recorder.threads), recorder.threads
    assert threading.current_thread().name not in recorder.threads
