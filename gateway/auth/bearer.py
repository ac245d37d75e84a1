"""Where a data request carries its key and its session.

``x-api-key`` carries the project key; ``Authorization: Bearer <token>`` carries the
end user's session. A Bearer value that starts with ``sheen_`` is a key (as before
sessions existed), so existing clients that send the key as a Bearer keep working.

The session token itself goes no further than the pipeline, which hashes it
(``gateway.auth.tokens.token_hash``) for the admission statement; it is never logged.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.auth.keys import MAX_KEY_LENGTH

KEY_PREFIX = "sheen_"
# a real token is 43 characters; longer values are hashed whole but can never match
MAX_SESSION_LENGTH = 512


def credentials_from_headers(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """``(key, session)`` of a request; either may be None."""
    bearer: str | None = None
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            bearer = value.strip()
    api_key = headers.get("x-api-key")
    key = api_key.strip()[:MAX_KEY_LENGTH] if api_key and api_key.strip() else None
    if bearer is None:
        return key, None
    if bearer.startswith(KEY_PREFIX):
        # the key as a Bearer wins, as in the original
        return bearer[:MAX_KEY_LENGTH], None
    return key, bearer[:MAX_SESSION_LENGTH]
