"""SQLSTATE → contract error mapping, without a server."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from gateway.query.executor import _propagates, map_pg_error


@pytest.mark.parametrize(
    ("sqlstate", "code", "status"),
    [
        ("23505", "UNIQUE_VIOLATION", 409),
        ("23503", "FOREIGN_KEY_VIOLATION", 409),
        ("23502", "NOT_NULL_VIOLATION", 400),
        ("23514", "CHECK_VIOLATION", 400),
        ("22P02", "INVALID_VALUE", 400),
        ("22007", "INVALID_VALUE", 400),
        ("22008", "INVALID_VALUE", 400),
        ("22003", "INVALID_VALUE", 400),
        ("22001", "INVALID_VALUE", 400),
        ("22023", "INVALID_VALUE", 400),
        ("57014", "QUERY_TIMEOUT", 504),
        ("42P01", "QUERY_FAILED", 500),
        ("42501", "QUERY_FAILED", 500),
        ("XX000", "QUERY_FAILED", 500),
        ("40P01", "QUERY_FAILED", 500),
    ],
)
def test_mapping(sqlstate: str, code: str, status: int) -> None:
    exc = errors.lookup(sqlstate)("server text with SELECT secret FROM x")
    err = map_pg_error(exc)
    assert (err.code, err.status) == (code, status)
    assert "secret" not in err.message and "SELECT" not in err.message


def test_plain_22p02_is_invalid_value_not_row_limit() -> None:
    # The row-limit marker lives in the server's diagnostics (covered by the DB tests);
    # without it a 22P02 is an ordinary invalid value.
    assert map_pg_error(errors.lookup("22P02")("x"), max_rows=5).code == "INVALID_VALUE"


@pytest.mark.parametrize(
    ("exc", "propagates"),
    [
        (psycopg.OperationalError("connection lost"), True),
        (errors.AdminShutdown(), True),
        (errors.lookup("08006")(), True),
        (errors.lookup("53300")(), True),
        (errors.QueryCanceled(), False),  # an OperationalError subclass, but a timeout
        (errors.UniqueViolation(), False),
        (errors.lookup("55P03")(), False),
        (psycopg.DataError("client-side"), False),
    ],
)
def test_what_propagates(exc: psycopg.Error, propagates: bool) -> None:
    assert _propagates(exc) is propagates
