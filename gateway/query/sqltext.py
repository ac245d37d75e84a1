"""SQL text composition for the compiler, with no database driver behind it.

The compiler must stay pure (no psycopg, no I/O) so it can be tested and fuzzed without a
database and so the import rule "pure parts never import psycopg" holds (tests/unit/
test_layout.py). This module offers the small part of ``psycopg.sql``'s interface the
compiler uses — ``SQL``, ``Identifier``, ``Literal``, ``Composed``, ``format``, ``join``,
``+`` and ``as_string`` — with the same semantics:

* ``SQL`` is trusted text written in our source; ``{}`` / ``{name}`` placeholders are
  filled by ``format`` with other composables only, never with raw strings.
* ``Identifier`` quotes each name PostgreSQL's way (``"`` doubled inside ``"…"``), which is
  exact for every name the registry allows (a name can't contain NUL).
* ``Literal`` renders only constants of our own (strings and integers), with the
  escape-string form when a backslash is present, so it is right whatever
  ``standard_conforming_strings`` says.

Values from requests never become text: they are bound as ``%s`` parameters.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from typing import Any

_FORMATTER = string.Formatter()


class Composable:
    """A piece of SQL text; ``as_string`` renders it."""

    def as_string(self, context: Any = None) -> str:
        raise NotImplementedError

    def __add__(self, other: Composable) -> Composed:
        if not isinstance(other, Composable):
            return NotImplemented
        return Composed([self, other])

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.as_string() == other.as_string()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.as_string()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.as_string()!r})"


class Composed(Composable):
    """A sequence of composables rendered one after another."""

    def __init__(self, parts: Iterable[Composable]) -> None:
        self.parts: list[Composable] = []
        for part in parts:
            if isinstance(part, Composed):
                self.parts.extend(part.parts)
            elif isinstance(part, Composable):
                self.parts.append(part)
            else:
                raise TypeError(f"Composed takes Composable objects, not {type(part).__name__}")

    def as_string(self, context: Any = None) -> str:
        return "".join(part.as_string() for part in self.parts)

    def join(self, joiner: SQL | str) -> Composed:
        sep = SQL(joiner) if isinstance(joiner, str) else joiner
        return sep.join(self.parts)


class SQL(Composable):
    """Trusted SQL text, possibly with ``{}`` placeholders for ``format``."""

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise TypeError(f"SQL takes a str, not {type(text).__name__}")
        self.text = text

    def as_string(self, context: Any = None) -> str:
        return self.text

    def format(self, *args: Composable, **kwargs: Composable) -> Composed:
        """Fill ``{}``, ``{0}`` and ``{name}`` placeholders; ``{{``/``}}`` are braces."""
        parts: list[Composable] = []
        auto = 0
        for literal, field, spec, conversion in _FORMATTER.parse(self.text):
            if literal:
                parts.append(SQL(literal))
            if field is None:
                continue
            if spec or conversion:
                raise ValueError("format specifications and conversions are not supported")
            if field == "":
                value: Any = args[auto]
                auto += 1
            elif field.isdigit():
                value = args[int(field)]
            else:
                value = kwargs[field]
            if not isinstance(value, Composable):
                raise TypeError(f"SQL.format takes Composable objects, not {type(value).__name__}")
            parts.append(value)
        return Composed(parts)

    def join(self, seq: Iterable[Composable]) -> Composed:
        parts: list[Composable] = []
        for i, item in enumerate(seq):
            if i:
                parts.append(self)
            parts.append(item)
        return Composed(parts)


class Identifier(Composable):
    """A (possibly qualified) name, each part quoted: ``"schema"."table"``."""

    def __init__(self, *names: str) -> None:
        if not names or not all(isinstance(n, str) for n in names):
            raise TypeError("Identifier takes one or more str")
        if any("\x00" in n for n in names):
            raise ValueError("an identifier can't contain NUL")
        self.names = names

    def as_string(self, context: Any = None) -> str:
        return ".".join('"' + n.replace('"', '""') + '"' for n in self.names)


class Literal(Composable):
    """A constant of our own source rendered as SQL: a string or an integer."""

    def __init__(self, value: str | int) -> None:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise TypeError("Literal takes a str or an int")
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("a literal can't contain NUL")
        self.value = value

    def as_string(self, context: Any = None) -> str:
        if isinstance(self.value, int):
            return str(self.value)
        quoted = self.value.replace("'", "''")
        if "\\" in quoted:
            return "E'" + quoted.replace("\\", "\\\\") + "'"
        return "'" + quoted + "'"
