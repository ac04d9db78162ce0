"""Secrets never leave the gateway: provider and client keys are scrubbed from everything it writes.

The gateway never puts a key in a record on purpose (keys travel in headers,
and records keep bodies), but an upstream may echo one back in an error
message, and a client may put one in a body field. Every record line, error
message and log line passes through :meth:`Redactor.scrub` on its way out.
"""

from __future__ import annotations

import logging

MASK = "[redacted]"
MIN_SECRET_LENGTH = 8  # shorter values would mask ordinary words


class Redactor:
    """Replaces every known secret with ``[redacted]``."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        self._text: list[str] = []
        self._bytes: list[bytes] = []
        for secret in secrets or []:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        """Remember ``secret`` (ignored when empty or too short to be one)."""
        if secret and len(secret) >= MIN_SECRET_LENGTH and secret not in self._text:
            self._text.append(secret)
            self._bytes.append(secret.encode())

    def scrub(self, data: bytes) -> bytes:
        """``data`` with every secret masked."""
        for secret in self._bytes:
            if secret in data:
                data = data.replace(secret, MASK.encode())
        return data

    def scrub_text(self, text: str) -> str:
        """``text`` with every secret masked."""
        for secret in self._text:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in every message it passes."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor.scrub_text(record.getMessage())
        record.args = None
        return True
