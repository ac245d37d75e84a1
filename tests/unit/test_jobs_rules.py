"""The jobs API's pure rules: delays, names, cron, fire selection, backoff, signatures."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import random
import socket
from typing import Any

import orjson
import pytest

from gateway.jobs import rules, signing, ssrf
from gateway.jobs.rules import JobsError


@pytest.mark.parametrize(
    ("text", "ms"), [("30s", 30_000), ("15m", 900_000), ("1h", 3_600_000), ("1d", 86_400_000)]
)
def test_delays(text: str, ms: int) -> None:
    assert rules.parse_delay(text) == ms


@pytest.mark.parametrize(("text", "code"), [("8d", "DELAY_TOO_LONG"), ("1w", "INVALID_DELAY")])
def test_bad_delays(text: str, code: str) -> None:
    with pytest.raises(JobsError) as exc:
        rules.parse_delay(text)
    assert exc.value.code == code


def test_cron_five_and_six_fields() -> None:
    assert rules.check_cron("*/5  * * * * *") == "*/5 * * * * *"
    assert rules.check_cron("0 3 * * 1-5") == "0 3 * * 1-5"
    for bad in ("", "* * * *", "* * * * * * *", "60 * * * *", "x y z a b"):
        with pytest.raises(JobsError) as exc:
            rules.check_cron(bad)
        assert exc.value.code == "INVALID_CRON"


def test_six_fields_put_seconds_first() -> None:
    start = dt.datetime(2026, 1, 1, 0, 0, 1, tzinfo=dt.UTC)
    times = rules.fire_times_between(
        "*/5 * * * * *", "UTC", start, start + dt.timedelta(seconds=12)
    )
    assert [t.second for t in times] == [5, 10]


def test_timezone_is_honoured() -> None:
    start = dt.datetime(2025, 12, 31, 23, 0, tzinfo=dt.UTC)
    nxt = rules.next_fire("0 9 * * *", "Asia/Tokyo", start)
    assert nxt == dt.datetime(2026, 1, 1, 0, 0, tzinfo=dt.UTC)  # 09:00 JST = 00:00 UTC
    nxt = rules.next_fire("0 9 * * *", "Asia/Tokyo", nxt)
    assert nxt == dt.datetime(2026, 1, 2, 0, 0, tzinfo=dt.UTC)


def test_missed_fires_collapse_to_one() -> None:
    now = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
    missed = [now - dt.timedelta(minutes=m) for m in (60, 30, 5)]
    assert rules.fires_to_run(missed, now, 10) == [missed[-1]]
    recent = [now - dt.timedelta(seconds=s) for s in (6, 1)]
    assert rules.fires_to_run(missed + recent, now, 10) == recent


def test_backoff_grows_from_two_seconds_with_jitter() -> None:
    rng = random.Random(1)
    for attempt, base in ((1, 2), (2, 4), (3, 8)):
        for _ in range(50):
            assert base * 0.75 <= rules.backoff_s(attempt, rng) <= base * 1.25


def test_signature_round_trip() -> None:
    secret = signing.new_secret()
    body = b'{"id":"x"}'
    header = signing.signature(secret, "1700000000", body)
    assert header.startswith("v1=") and len(header) == 67
    assert signing.verify(secret, "1700000000", body, header)
    assert not signing.verify(secret, "1700000001", body, header)
    assert not signing.verify("other", "1700000000", body, header)


@pytest.mark.parametrize(
    ("address", "allowed_with_flag"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("192.168.1.1", True),
        ("fd00::1", True),
        ("::ffff:127.0.0.1", True),
        ("169.254.169.254", False),
        ("fe80::1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        # IPv4 wrapped in IPv6 is judged by the IPv4 it reaches: 6to4, Teredo, NAT64
        ("2002:7f00:1::1", True),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::1", False),  # 6to4 of 169.254.169.254
        ("2001:0:808:808:0:0:5601:5601", False),  # Teredo, client 169.254.169.254
        ("2001:0:808:808:0:0:80ff:fffe", True),  # Teredo, client 127.0.0.1
        ("64:ff9b::7f00:1", True),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
    ],
)
def test_ssrf_address_rules(address: str, allowed_with_flag: bool) -> None:
    ip = ipaddress.ip_address(address)
    assert ssrf.refusal(ip, allow_private=False) is not None
    assert (ssrf.refusal(ip, allow_private=True) is None) is allowed_with_flag


def test_public_addresses_pass() -> None:
    assert ssrf.refusal(ipaddress.ip_address("93.184.216.34"), False) is None
    # wrapped public IPv4 (behind DNS64 every name has a 64:ff9b:: address)
    for wrapped in ("2002:5db8:d822::1", "64:ff9b::5db8:d822", "::ffff:93.184.216.34"):
        assert ssrf.refusal(ipaddress.ip_address(wrapped), False) is None, wrapped
    target = ssrf.parse_url("https://example.com/hook?a=1")
    assert (target.host_header, target.port, target.path) == ("example.com", 443, "/hook?a=1")
    assert (
        target.url_for(ipaddress.ip_address("93.184.216.34"))
        == "https://93.184.216.34:443/hook?a=1"
    )


def _resolver(*addresses: str) -> Any:
    async def lookup(host: str, port: int, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    return lookup


@pytest.mark.parametrize(
    ("addresses", "refused"),
    [
        (("10.20.30.40",), True),  # a name resolving to a private address
        (("93.184.216.34", "192.168.0.10"), True),  # one bad answer refuses the name
        (("169.254.169.254",), True),
        (("93.184.216.34",), False),
    ],
)
def test_names_are_checked_after_resolution(addresses: tuple[str, ...], refused: bool) -> None:
    target = ssrf.parse_url("http://hooks.example.com/x")

    async def run() -> Any:
        return await ssrf.resolve(target, allow_private=False, lookup=_resolver(*addresses))

    if refused:
        with pytest.raises(ssrf.TargetRefused) as exc:
            asyncio.run(run())
        assert "hooks.example.com resolves to" in str(exc.value)
    else:
        assert str(asyncio.run(run())) == addresses[0]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"payload": {}}, "VALIDATION_ERROR"),
        ({"name": "", "payload": {}}, "VALIDATION_ERROR"),
        ({"name": "a b", "payload": {}}, "INVALID_JOB_NAME"),
        ({"name": "ok"}, "INVALID_PAYLOAD"),
        ({"name": "ok", "payload": None}, "INVALID_PAYLOAD"),
        ({"name": "ok", "payload": "s"}, "INVALID_PAYLOAD"),
        ({"name": "ok", "payload": 1.5}, "INVALID_PAYLOAD"),
        ({"name": "ok", "payload": {"a": ["\x00"]}}, "INVALID_PAYLOAD"),
        ({"name": "ok", "payload": {"\x00": 1}}, "INVALID_PAYLOAD"),
        ({"name": "ok", "payload": {}, "concurrencyKey": "\x00"}, "VALIDATION_ERROR"),
        ({"name": "ok", "payload": {}, "idempotencyKey": "k\x00"}, "VALIDATION_ERROR"),
        ({"name": "ok", "payload": {}, "runAt": "0001-01-01T00:30:00+01:00"}, "INVALID_DELAY"),
        ({"name": "ok", "payload": {}, "runAt": "9999-12-31T23:59:59-00:01"}, "INVALID_DELAY"),
    ],
)
def test_enqueue_input_refusals(body: dict[str, Any], code: str) -> None:
    with pytest.raises(rules.JobsError) as exc:
        rules.parse_enqueue(orjson.dumps(body))
    assert exc.value.code == code and exc.value.status == 400
    assert "\x00" not in exc.value.message


def test_arrays_and_objects_are_payloads_and_year_one_is_a_date() -> None:
    assert rules.parse_enqueue(b'{"name": "a", "payload": [1, 2]}').payload == [1, 2]
    assert rules.parse_enqueue(b'{"name": "a", "payload": {}}').payload == {}
    past = rules.parse_enqueue(b'{"name": "a", "payload": {}, "runAt": "0001-01-01T00:00:00Z"}')
    assert past.run_at is not None and past.run_at.year == 1


@pytest.mark.parametrize("cron", ["0 0 30 2 *", "0 0 0 31 4 *", "0 0 31 2,4,6,9,11 *"])
def test_cron_that_never_fires_is_invalid(cron: str) -> None:
    with pytest.raises(rules.JobsError) as exc:
        rules.check_cron(cron)
    assert exc.value.code == "INVALID_CRON"


def test_cron_that_fires_rarely_is_valid() -> None:
    assert rules.check_cron("0 0 29 2 *") == "0 0 29 2 *"  # leap days only
