"""HMAC v2 signing: the original's exact bytes, and every way a signature can fail.

The vectors were produced by the original worker's ``generateV2Signature`` algorithm
(``URLSearchParams`` canonicalization, newline-joined fields, HMAC-SHA256 hex) run under
Node.js, so a client of the original signs requests this gateway accepts.
"""

from __future__ import annotations

import pytest

from gateway.control import signing
from gateway.control.signing import SignatureError, sign_request, verify

SECRET = "secret-0123456789abcdef"

# (body, timestamp, method, path?query, nonce, signature, canonical text) from Node.js
VECTORS = [
    ("", "1700000000", "get", "/v1/admin/projects", "nonce-0001",
     "a19e264ddb37cca1fbb39df844ca4ed0d0c0d8b2da817286908e5b70957d54f7",
     "GET\n/v1/admin/projects\n1700000000\nnonce-0001\n"),
    ("", "1700000000", "GET", "/v1/admin/projects?offset=20&limit=5", "nonce-0002",
     "96f4d7e68f4a97d51602567c00ac39bca1e4247eece68f9cd4f73363c0e8d55b",
     "GET\n/v1/admin/projects?limit=5&offset=20\n1700000000\nnonce-0002\n"),
    ('{"name":"demo-app"}', "1700000123", "POST", "/v1/admin/projects", "nonce-0003",
     "0c6575806898109d6ee310b84d6a008dca907c4e26596e3d6cafd9d58400b025",
     'POST\n/v1/admin/projects\n1700000123\nnonce-0003\n{"name":"demo-app"}'),
    ("", "1700000000", "GET", "/v1/admin/projects?b=2&a=1&a=0&c=x%20y~*&d", "nonce-0004",
     "090f7447b222b45c0a10c98ba2c33879052f761b30bb40f09d5eeba32de3b759",
     "GET\n/v1/admin/projects?a=1&a=0&b=2&c=x+y%7E*&d=\n1700000000\nnonce-0004\n"),
    ('{"confirm":"café"}', "1700000999", "DELETE", "/v1/admin/projects/caf%C3%A9", "n-é",
     "edb56f9b0ba0202b448741c4dc911da4ef03d325ce2057cebc0b5431c4a1dcae",
     'DELETE\n/v1/admin/projects/caf%C3%A9\n1700000999\nn-é\n{"confirm":"café"}'),
]  # fmt: skip


@pytest.mark.parametrize(("body", "ts", "method", "target", "nonce", "sig", "text"), VECTORS)
def test_the_originals_vectors(
    body: str, ts: str, method: str, target: str, nonce: str, sig: str, text: str
) -> None:
    path, _, query = target.partition("?")
    raw = body.encode()
    assert signing.canonical_string(method, path, query, ts, nonce, raw) == text.encode()
    assert signing.signature(SECRET, method, path, query, ts, nonce, raw) == sig
    assert sign_request(SECRET, method, target, body, timestamp=int(ts), nonce=nonce) == {
        "x-sheen-sig-v2": sig,
        "x-sheen-timestamp": ts,
        "x-sheen-nonce": nonce,
    }


def _verify(headers: dict[str, str], *, now: float = 1700000000, body: bytes = b"",
            secrets: tuple[str, ...] = (SECRET,), method: str = "GET",
            query: str = "limit=5") -> signing.Verified:  # fmt: skip
    return verify(secrets, method, "/v1/admin/projects", query, headers, body, now=now)


def signed(**kwargs: object) -> dict[str, str]:
    return sign_request(SECRET, "GET", "/v1/admin/projects?limit=5", timestamp=1700000000, **kwargs)  # type: ignore[arg-type]


def test_a_good_signature_verifies_within_the_window() -> None:
    headers = signed(nonce="abcdefgh12345678")
    assert _verify(headers) == signing.Verified(1700000000, "abcdefgh12345678")
    assert _verify(headers, now=1700000000 + 120).nonce == "abcdefgh12345678"
    assert _verify(headers, now=1700000000 - 120).nonce == "abcdefgh12345678"


def test_rotation_accepts_any_configured_secret() -> None:
    headers = signed()
    assert _verify(headers, secrets=("another-secret-000000", SECRET)).timestamp == 1700000000
    with pytest.raises(SignatureError):
        _verify(headers, secrets=("another-secret-000000",))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"now": 1700000000 + 121}, "timestamp outside the window"),
        ({"now": 1700000000 - 121}, "timestamp outside the window"),
        ({"body": b"{}"}, "bad signature"),
        ({"method": "POST"}, "bad signature"),
        ({"query": "limit=6"}, "bad signature"),
        ({"secrets": ("wrong-secret-0123456789",)}, "bad signature"),
        ({"secrets": ()}, "bad signature"),
    ],
)
def test_refusals(change: dict[str, object], reason: str) -> None:
    with pytest.raises(SignatureError) as caught:
        _verify(signed(), **change)  # type: ignore[arg-type]
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("header", "value", "reason"),
    [
        ("x-sheen-sig-v2", None, "missing signature headers"),
        ("x-sheen-timestamp", None, "missing signature headers"),
        ("x-sheen-nonce", None, "missing signature headers"),
        ("x-sheen-timestamp", "1.7e9", "malformed timestamp"),
        ("x-sheen-timestamp", "-1700000000", "malformed timestamp"),
        ("x-sheen-nonce", "short", "malformed nonce"),
        ("x-sheen-nonce", "has space inside", "malformed nonce"),
        ("x-sheen-nonce", "x" * 129, "malformed nonce"),
        ("x-sheen-sig-v2", "A" * 64, "malformed signature"),
        ("x-sheen-sig-v2", "0" * 63, "malformed signature"),
    ],
)
def test_malformed_headers(header: str, value: str | None, reason: str) -> None:
    headers = signed()
    if value is None:
        del headers[header]
    else:
        headers[header] = value
    with pytest.raises(SignatureError) as caught:
        _verify(headers)
    assert caught.value.reason == reason


def test_each_call_draws_a_fresh_nonce() -> None:
    nonces = {sign_request(SECRET, "GET", "/v1/admin/projects")["x-sheen-nonce"] for _ in range(50)}
    assert len(nonces) == 50
    assert all(signing.NONCE_RE.match(n) for n in nonces)


def test_the_secret_setting() -> None:
    from gateway.settings import Settings, SettingsError

    assert Settings.from_env({}).admin_hmac_secrets == ()
    two = Settings.from_env({"GATEWAY_ADMIN_HMAC_SECRET": f"{SECRET}, second-secret-012345 "})
    assert two.admin_hmac_secrets == (SECRET, "second-secret-012345")
    assert SECRET not in repr(two)  # settings may be logged; secrets never are
    with pytest.raises(SettingsError, match="GATEWAY_ADMIN_HMAC_SECRET"):
        Settings.from_env({"GATEWAY_ADMIN_HMAC_SECRET": "short"})
