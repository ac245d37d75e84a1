"""Magic-link mail: the standard library's SMTP client, run in a thread.

``GATEWAY_SMTP_URL``:
- ``smtp://user:pass@host:587`` — STARTTLS is required (the certificate is verified
  against the system's trust store, or ``SSL_CERT_FILE``); credentials never travel in
  clear;
- ``smtps://user:pass@host:465`` — TLS from the first byte;
- ``smtp+plain://host:25`` — no TLS at all, for a relay on the same host.

Without it (``make run``) the link is written to the log instead (``UNSENT_MAIL_LOGGER``,
which ``gateway dev`` prints and appends to ``.pgdata/mail.log``): a development setup,
the one case where a magic-link token appears in a log.

smtplib rather than an asyncio client: one message per request, sent from a thread, needs
no extra dependency, and its STARTTLS handling is the standard library's.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from email.message import EmailMessage
from urllib.parse import unquote, urlencode, urlsplit

logger = logging.getLogger("gateway.auth")
UNSENT_MAIL_LOGGER = "gateway.auth.unsent_mail"
unsent_logger = logging.getLogger(UNSENT_MAIL_LOGGER)


def link_for(base_url: str, token: str) -> str:
    separator = "&" if "?" in base_url else "?"
    return f"{base_url}{separator}{urlencode({'token': token})}"


def message(
    sender: str, to: str, link: str, ttl_s: int, *, verification: bool = False
) -> EmailMessage:
    """The sign-in link, or (``verification``) the same kind of link sent at sign-up to
    confirm the address: following it signs in and marks the address verified."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    minutes = max(1, ttl_s // 60)
    if verification:
        msg["Subject"] = "Confirm your email address"
        msg.set_content(
            f"Confirm this address with this link (valid for {minutes} minutes, once):\n\n"
            f"{link}\n\nIf you did not create an account, following the link still "
            "protects you: it ends every session of the account and clears its password.\n"
        )
        return msg
    msg["Subject"] = "Your sign-in link"
    msg.set_content(
        f"Sign in with this link (valid for {minutes} minutes, once):\n\n{link}\n\n"
        "If you did not ask for it, ignore this message.\n"
    )
    return msg


def send_blocking(url: str, msg: EmailMessage, timeout: float) -> None:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or "localhost"
    context = ssl.create_default_context()
    client: smtplib.SMTP
    if scheme == "smtps":
        client = smtplib.SMTP_SSL(host, parts.port or 465, timeout=timeout, context=context)
    else:
        client = smtplib.SMTP(
            host, parts.port or (25 if scheme == "smtp+plain" else 587), timeout=timeout
        )
    with client:
        client.ehlo()
        if scheme == "smtp":
            client.starttls(context=context)  # raises when the server doesn't offer it
            client.ehlo()
        if parts.username:
            client.login(unquote(parts.username), unquote(parts.password or ""))
        client.send_message(msg)


class Mailer:
    def __init__(self, smtp_url: str, sender: str, timeout_s: float) -> None:
        self.smtp_url = smtp_url
        self.sender = sender
        self.timeout_s = timeout_s
        self.sent = 0
        self.failed = 0

    async def send_magic_link(self, to: str, link: str, ttl_s: int) -> bool:
        """True when handed to the SMTP server. A failure is logged (without the link) and
        the request still succeeds, as in the original: the user can ask again."""
        if not self.smtp_url:
            unsent_logger.warning(
                "magic link for %s (no GATEWAY_SMTP_URL, development only): %s", to, link
            )
            return True
        return await self._send(to, message(self.sender, to, link, ttl_s))

    async def send_verification(self, to: str, link: str, ttl_s: int) -> bool:
        """Sign-up's confirmation link (only sent with SMTP configured)."""
        return await self._send(to, message(self.sender, to, link, ttl_s, verification=True))

    async def _send(self, to: str, msg: EmailMessage) -> bool:
        try:
            await asyncio.to_thread(send_blocking, self.smtp_url, msg, self.timeout_s)
        except (OSError, smtplib.SMTPException) as exc:
            self.failed += 1
            logger.error("magic link mail to %s failed: %s", to, type(exc).__name__)
            return False
        self.sent += 1
        return True
