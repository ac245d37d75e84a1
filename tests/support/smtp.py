"""A real SMTP server for the auth tests: aiosmtpd (the dev extra) with STARTTLS on a
throwaway certificate and AUTH LOGIN, so magic links are mailed, received and followed
exactly as in production. ``start_smtp`` is the ``smtp`` fixture's body
(tests/cluster/conftest.py)."""

from __future__ import annotations

import email
import re
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.db.localdb import free_port

SMTP_USER, SMTP_PASSWORD = "mailer", "smtp-secret-pw"


class Inbox:
    def __init__(self) -> None:
        self.messages: list[email.message.Message] = []
        self.arrived = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.arrived:
            self.messages.append(email.message_from_bytes(envelope.content))
            self.arrived.notify_all()
        return "250 OK"

    def wait_for(self, to: str, timeout: float = 15.0) -> email.message.Message:
        with self.arrived:
            ok = self.arrived.wait_for(
                lambda: any(m["To"] == to for m in self.messages), timeout=timeout
            )
            assert ok, f"no mail to {to}"
            return next(m for m in self.messages if m["To"] == to)


@contextmanager
def start_smtp(folder: Path) -> Iterator[tuple[Inbox, int, Path]]:
    """``(inbox, port, certificate)`` of a running server, stopped on exit."""
    pytest.importorskip("aiosmtpd", reason="aiosmtpd (dev dependency) is needed for mail tests")
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    if shutil.which("openssl") is None:
        pytest.skip("openssl (Debian package openssl) is needed to make the SMTP certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        ok = data.login == SMTP_USER.encode() and data.password == SMTP_PASSWORD.encode()
        return AuthResult(success=ok)

    inbox = Inbox()
    port = free_port()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        server_hostname="localhost",
        tls_context=context,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
    )
    controller.start()
    try:
        yield inbox, port, cert
    finally:
        controller.stop()


def link_token(message: email.message.Message) -> str:
    """The ``token`` of the link in a magic-link or verification mail."""
    text = message.get_payload(decode=True).decode()
    found = re.search(r"[?&]token=([A-Za-z0-9_-]+)", text)
    assert found is not None, text
    return found.group(1)


def wait_for_subject(
    inbox: Inbox, to: str, subject: str, timeout: float = 15.0
) -> email.message.Message:
    """The first mail to ``to`` with this subject, waiting for it to arrive."""
    with inbox.arrived:
        ok = inbox.arrived.wait_for(
            lambda: any(m["To"] == to and m["Subject"] == subject for m in inbox.messages),
            timeout=timeout,
        )
        assert ok, f"no mail {subject!r} to {to}"
        return next(m for m in inbox.messages if m["To"] == to and m["Subject"] == subject)


def smtp_env(port: int, cert: Path) -> dict[str, str]:
    """A gateway's settings for this server: STARTTLS trusting its certificate, links to
    the app's page at https://app.example.test/auth/magic-link."""
    return {
        "GATEWAY_SMTP_URL": f"smtp://{SMTP_USER}:{SMTP_PASSWORD}@localhost:{port}",
        "GATEWAY_SMTP_FROM": "auth@example.test",
        "GATEWAY_AUTH_MAGIC_LINK_URL": "https://app.example.test/auth/magic-link",
        "SSL_CERT_FILE": str(cert),
    }
