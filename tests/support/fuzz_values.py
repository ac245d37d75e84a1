"""Hostile values for the route fuzzer (tests/cluster/test_fuzz_routes.py).

Three layers, each a hypothesis strategy:

- ``hostile_text`` / ``hostile_json``: strings and JSON values that break naive code
  (NUL, lone surrogates, unicode digits, huge and non-finite numbers, deep nesting);
- ``from_schema``: a value drawn from a JSON schema (the subset pydantic writes into the
  admin API's OpenAPI document), so most examples get past the first check;
- ``mutated``: a valid value with one thing wrong (a field's type, an unknown field, a
  NUL, a huge number or string, deep nesting), the shape of most real bugs.

``body_bytes`` turns a value into the bytes sent, sometimes not JSON at all (bad UTF-8,
duplicate keys, truncation, 10,000 levels of nesting), since a body is bytes before it
is anything else.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

# characters that have broken parsers, SQL drivers or encoders somewhere
NASTY_CHARS = [
    "\x00", "\ud800", "\udfff", "\u2028", "\ufeff", "\u0660", "\u00b2", "\u0663",
    "'", '"', "\\", ";", "%", "_", "*", "/", ".", "\n", "\r", "\t", " ",
]  # fmt: skip
# values whose shape invites a parser in: dates, uuids, numbers as text, intervals
SHAPED_STRINGS = [
    "", " ", "0", "-1", "1e400", "NaN", "Infinity", "²", "١٢", "0x10", "99999999999999999999",
    "2024-01-01", "2024-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
    "0000-00-00", "2024-02-30T00:00:00Z", "+275760-09-13T00:00:00Z",
    "12345678-1234-5678-1234-567812345678", "00000000-0000-0000-0000-000000000000",
    "* * * * *", "0 0 * * *", "60 24 32 13 8", "@reboot", "*/0 * * * *",
    "Europe/Paris", "UTC", "Mars/Olympus", "../../etc/passwd",
    "30s", "0ms", "999999999d", "1h", "-5m",
    "a@example.com", "@", "a@b", "x" * 300,
]  # fmt: skip
HUGE_NUMBERS = [2**31, -(2**31) - 1, 2**53 + 1, 2**63, -(2**63) - 1, 2**64, 10**30, -(10**30)]

hostile_text = st.one_of(
    st.text(
        alphabet=st.characters(codec="utf-8", categories=None) | st.sampled_from(NASTY_CHARS),
        max_size=20,
    ),
    st.sampled_from(SHAPED_STRINGS),
)
hostile_numbers = st.one_of(
    st.integers(-1000, 1000),
    st.integers(),
    st.sampled_from(HUGE_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True),
)
hostile_scalars = st.one_of(st.none(), st.booleans(), hostile_numbers, hostile_text)
hostile_json = st.recursive(
    hostile_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(hostile_text, children, max_size=4)
    ),
    max_leaves=10,
)


def deep(value: Any, depth: int) -> Any:
    """``value`` inside ``depth`` alternating lists and objects."""
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


# --- from a JSON schema ------------------------------------------------------------------


def from_schema(schema: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A value that mostly fits ``schema`` (``$ref``, ``anyOf``, ``enum``, objects with
    ``properties``/``required``, arrays, strings, numbers, booleans): constraints such as
    ``pattern`` or ``maximum`` are honoured loosely, since the edge is what is tested."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return st.deferred(lambda: from_schema(defs[name], defs))
    if "anyOf" in schema or "oneOf" in schema:
        options = schema.get("anyOf") or schema.get("oneOf") or []
        return st.one_of([from_schema(option, defs) for option in options])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, defs) for k in kind])
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        required = set(schema.get("required", ()))
        fields = {k: from_schema(v, defs) for k, v in properties.items()}
        extra = schema.get("additionalProperties")
        strategy = st.fixed_dictionaries(
            {k: v for k, v in fields.items() if k in required},
            optional={k: v for k, v in fields.items() if k not in required},
        )
        if not properties and extra is not False:
            return st.dictionaries(st.text(max_size=8), hostile_scalars, max_size=3)
        return strategy
    if kind == "array":
        items = from_schema(schema.get("items", {}), defs)
        low = min(schema.get("minItems", 0), 3)
        return st.lists(items, min_size=low, max_size=max(low, 3))
    if kind == "string":
        pattern = schema.get("pattern")
        examples = st.from_regex(pattern, fullmatch=True) if pattern else st.text(max_size=20)
        return examples.filter(lambda s: len(s) <= 64) | st.sampled_from(SHAPED_STRINGS)
    if kind == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        return st.integers(low, high) | st.sampled_from([*HUGE_NUMBERS, -1, 0])
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False) | st.integers()
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return hostile_json  # no type: any JSON value


# --- one thing wrong ---------------------------------------------------------------------

MUTATIONS = ("type", "unknown", "nul", "huge_number", "huge_string", "deep", "drop", "null")


@st.composite
def mutated(draw: st.DrawFn, valid: Any, huge_string_chars: int = 200_000) -> Any:
    """``valid`` with one field (or the whole value) made wrong in one way."""
    if not isinstance(valid, dict) or not valid or draw(st.integers(0, 5)) == 0:
        return draw(_wrong(valid, huge_string_chars))
    value = dict(valid)
    field = draw(st.sampled_from(sorted(value)))
    kind = draw(st.sampled_from(MUTATIONS))
    if kind == "unknown":
        value[draw(hostile_text)] = draw(hostile_json)
    elif kind == "drop":
        del value[field]
    elif isinstance(value[field], dict) and value[field] and draw(st.booleans()):
        value[field] = draw(mutated(value[field], huge_string_chars))  # one level down
    else:
        value[field] = draw(_wrong(value[field], huge_string_chars, kind))
    return value


def _wrong(value: Any, huge_string_chars: int, kind: str | None = None) -> st.SearchStrategy[Any]:
    if kind == "nul":
        text = value if isinstance(value, str) else "x"
        return st.integers(0, len(text)).map(lambda i: text[:i] + "\x00" + text[i:])
    if kind == "huge_number":
        return st.sampled_from([*HUGE_NUMBERS, 1e308, -1e308])
    if kind == "huge_string":
        return st.integers(1000, huge_string_chars).map(lambda n: "y" * n)
    if kind == "deep":
        return st.integers(10, 600).map(lambda n: deep(value, n))
    if kind == "null":
        return st.none()
    return hostile_json  # a value of any (likely wrong) type


# --- the bytes on the wire ---------------------------------------------------------------

RAW_BODIES = [
    b"", b"null", b"[]", b"{}", b"0", b'"x"', b"{", b'{"a":', b"\x00", b"\xff\xfe\xfd",
    b'{"query": \xff}', b"[" * 10_000 + b"]" * 10_000, b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
    b"\xef\xbb\xbf{}", b'{"\\ud800": 1}', b'{"a": "\\u0000"}', b"1e999999", b"-0",
    b"NaN", b"Infinity", b"{'a': 1}", b"a=1&b=2", b"--x\r\nContent-Disposition: form-data\r\n",
]  # fmt: skip


def encode_json(value: Any) -> bytes:
    """JSON as a sloppy client writes it: lone surrogates escaped, NaN and Infinity
    unquoted, integers of any size (all things a strict parser refuses)."""
    return json.dumps(value, ensure_ascii=True, allow_nan=True).encode()


@st.composite
def body_bytes(draw: st.DrawFn, value: Any) -> bytes:
    """The bytes sent for ``value``: mostly its JSON, sometimes broken on the wire."""
    body = encode_json(value)
    how = draw(st.sampled_from(["json"] * 8 + ["raw", "bad_utf8", "truncated", "dup_keys"]))
    if how == "raw":
        return draw(st.sampled_from(RAW_BODIES))
    if how == "bad_utf8" and body:
        cut = draw(st.integers(0, len(body)))
        junk = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]))
        return body[:cut] + junk + body[cut:]
    if how == "truncated" and body:
        return body[: draw(st.integers(0, len(body) - 1))]
    if how == "dup_keys" and isinstance(value, dict) and value:
        key = draw(st.sampled_from(sorted(value)))
        other = encode_json(draw(hostile_json))
        return b"{" + json.dumps(key).encode() + b":" + other + b"," + body[1:]
    return body


CONTENT_TYPES = [
    "application/json", "application/json", "application/json", "text/plain",
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "application/json; charset=latin-1", "application/octet-stream", "",
]  # fmt: skip
content_types = st.sampled_from(CONTENT_TYPES)
# header values an HTTP client can send (h11 refuses NUL, CR and LF in a header)
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=60,
) | st.sampled_from(["", " ", "null", "Bearer", "Bearer ", "Basic Zm9vOmJhcg==", "x" * 9000])
