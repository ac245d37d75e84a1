"""The auth API's pure parts: validation, passwords (argon2id and the original's scrypt)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth import admin, passwords, rules
from gateway.auth.rules import AuthError
from gateway.errors import STATUS_BY_CODE

# Made by Node's crypto exactly as the original does (salt = base64url text of 16 random
# bytes, used as the salt string; scryptSync(password, salt, 64, {N: 16384, r: 8, p: 1})),
# for the password "correct horse".
NODE_SCRYPT = (
    "scrypt$16384$8$1$WzoL0KTpErXOnXU-XdF9eA$"
    "14Esajkba7eT14DKuidtjHaY-k1DrQWxOEOXSfqXJLNXYOWQCZMn8ckA9qCxitYoXPurIkPl22e9V5TxWdkdIQ"
)


def test_original_scrypt_hashes_verify_and_ask_for_an_argon2id_rehash() -> None:
    verdict = passwords.verify(NODE_SCRYPT, "correct horse")
    assert verdict.ok and verdict.rehash is not None
    assert verdict.rehash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert passwords.verify(verdict.rehash, "correct horse") == passwords.Verdict(True, None)
    assert not passwords.verify(NODE_SCRYPT, "correct horsE").ok


@pytest.mark.parametrize(
    "stored",
    [
        None,
        "",
        "plain text password",
        "scrypt$16384$8$1$salt",
        "scrypt$16385$8$1$salt$" + "A" * 86,  # N not a power of two
        "scrypt$16384$8$1$salt$short",
        "$argon2id$garbage",
    ],
)
def test_unusable_hashes_never_verify(stored: str | None) -> None:
    assert passwords.verify(stored, "anything").ok is False


def test_import_accepts_only_known_hash_formats() -> None:
    assert passwords.is_known_format(NODE_SCRYPT)
    assert passwords.is_known_format(passwords.hash_password("a password"))
    assert not passwords.is_known_format("hunter2")
    assert not passwords.is_known_format("scrypt$1$8$1$s$h")


def test_emails_are_trimmed_lower_cased_and_bounded() -> None:
    assert rules.normalize_email("  Ann@Example.COM ") == "ann@example.com"
    assert rules.normalize_email("ü@例え.jp") == "ü@例え.jp"
    for bad in ("a@b", "a b@c.d", "a@b@c.d", "x" * 320 + "@b.co", "a\x00@b.co", "\ud800@b.co"):
        with pytest.raises(AuthError) as caught:
            rules.normalize_email(bad)
        assert caught.value.code == "INVALID_EMAIL"


def test_passwords_are_refused_before_hashing_when_over_1024_bytes() -> None:
    assert rules.check_password("é" * 512, new=True)  # 1,024 bytes exactly
    with pytest.raises(AuthError) as caught:
        rules.check_password("é" * 513, new=True)
    assert caught.value.code == "VALIDATION_ERROR"
    with pytest.raises(AuthError) as caught:
        rules.check_password("seven77", new=True)
    assert caught.value.code == "WEAK_PASSWORD"
    assert rules.check_password("seven77", new=False) == "seven77"


def test_envelope_and_throttle_buckets() -> None:
    error = AuthError("RATE_LIMIT", "slow down", headers={"Retry-After": "3"})
    assert error.status == 429
    assert (
        rules.error_body(error)
        == b'{"ok":false,"error":{"code":"RATE_LIMIT","message":"slow down"}}'
    )
    bucket = rules.throttle_bucket("sign_in", "p", "ann@example.com", "10.0.0.1")
    assert bucket.startswith("sign_in:") and "ann" not in bucket
    assert bucket != rules.throttle_bucket("sign_in", "p", "ann@example.com", "10.0.0.2")


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "email": JSON | st.emails() | st.text(max_size=400),
        "password": JSON | st.text(min_size=0, max_size=1100),
        "metadata": JSON,
        "token": JSON | st.text(max_size=200),
        "currentPassword": JSON | st.text(max_size=1100),
        "scope": JSON | st.sampled_from(["local", "global", "everywhere", ""]),
    },
)


@settings(max_examples=300, deadline=None)
@given(body=FIELDS | JSON, raw=st.booleans(), junk=st.binary(max_size=40))
def test_any_body_is_accepted_or_refused_with_a_4xx_code(body: Any, raw: bool, junk: bytes) -> None:
    payload = junk if raw else orjson.dumps(body)
    parsers = (
        rules.sign_up_body,
        rules.sign_in_body,
        rules.magic_link_body,
        rules.verify_body,
        rules.password_body,
        rules.sign_out_global,
    )
    for parse in parsers:
        try:
            parse(payload)
        except AuthError as error:
            assert 400 <= error.status < 500 and error.code in STATUS_BY_CODE


def test_the_hash_queue_is_bounded_with_a_503() -> None:
    import asyncio

    from gateway.errors import GatewayError

    async def scenario() -> list[Any]:
        hasher = passwords.Hasher(workers=1, queue_max=2)
        try:
            return await asyncio.gather(
                *(hasher.verify(None, "a password") for _ in range(3)), return_exceptions=True
            )
        finally:
            hasher.close()

    results = asyncio.run(scenario())
    refused = [r for r in results if isinstance(r, GatewayError)]
    assert len(refused) == 1 and refused[0].status == 503
    assert sum(isinstance(r, passwords.Verdict) and not r.ok for r in results) == 2


def test_the_smtp_password_never_appears_in_the_settings_repr() -> None:
    from gateway.settings import Settings, SettingsError

    settings = Settings.from_env({"GATEWAY_SMTP_URL": "smtp://mailer:hunter2-secret@mx:587"})
    assert settings.auth.smtp_url.endswith("@mx:587")
    assert "hunter2-secret" not in repr(settings)
    with pytest.raises(SettingsError, match="GATEWAY_SMTP_URL"):
        Settings.from_env({"GATEWAY_SMTP_URL": "http://mx"})


def test_password_body_and_sign_out_scope() -> None:
    change = rules.password_body(b'{"password": "new-password", "currentPassword": "old"}')
    assert change == rules.PasswordChange("new-password", "old")
    assert rules.password_body(b'{"password": "new-password"}').current is None
    for body, code in [
        (b'{"password": "short"}', "WEAK_PASSWORD"),
        (b"{}", "VALIDATION_ERROR"),
        (b'{"password": "new-password", "currentPassword": 5}', "VALIDATION_ERROR"),
        (b'{"password": "' + b"x" * 1100 + b'"}', "VALIDATION_ERROR"),
    ]:
        with pytest.raises(AuthError) as exc:
            rules.password_body(body)
        assert exc.value.code == code, body
    assert rules.sign_out_global(b"") is False
    assert rules.sign_out_global(b"{}") is False
    assert rules.sign_out_global(b'{"scope": "local"}') is False
    assert rules.sign_out_global(b'{"scope": "global"}') is True
    with pytest.raises(AuthError) as exc:
        rules.sign_out_global(b'{"scope": "all"}')
    assert exc.value.code == "VALIDATION_ERROR"


@pytest.mark.parametrize(
    "line",
    [
        '{"email": "a@b.co", "password_hash": "$argon2id\\u0000"}',
        '{"email": "a@b.co", "password_hash": null, "created_at": "0001-01-01T00:00:00+01:00"}',
        '{"email": "a@b.co", "password_hash": null, "created_at": "9999-12-31T23:00:00-05:00"}',
        '{"email": "a\\u0000@b.co", "password_hash": null}',
        '{"email": "a@b.co", "password_hash": null, "metadata": {"k": "\\u0000"}}',
    ],
)
def test_import_lines_a_database_could_not_take_are_refused(line: str) -> None:
    """NUL can't be stored; a date outside years 1-9999 in UTC could be stored but never
    read back: each is the file's error, naming the line, before anything is written."""
    with pytest.raises(admin.AuthAdminError) as exc:
        admin.parse_import_line(line, 7)
    assert str(exc.value).startswith("line 7")
