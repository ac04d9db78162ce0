"""Secrets never leave the gateway: provider and client keys are scrubbed from everything it writes.

The gateway never puts a key in a record on purpose (keys travel in headers,
and records keep bodies), but an upstream may echo one back (in an error, or
in a 200 answer), and a client may put one in a body field. Upstream answers,
stream events and errors are scrubbed where they enter the gateway
(``gateway.upstream``); every response body, stream event, record line, error
message and log line (tracebacks included) is scrubbed again on its way out.

A secret is masked in every encoding it can take: raw in text (log lines,
error messages), and JSON-escaped in JSON bytes (orjson's escaping, which
every answer is re-serialised with, and ``json.dumps``' ASCII escaping), so
a key holding ``"`` or ``\\`` cannot slip past in a JSON body. Every secret is
masked whatever its length; provider keys too short to mask without masking
ordinary words are refused when the config is loaded (``MIN_SECRET_LENGTH``).
"""

from __future__ import annotations

import json
import logging

import orjson

MASK = "[redacted]"
MIN_SECRET_LENGTH = 8  # shorter provider keys are refused at config load (gateway.config)
_MASK_BYTES = MASK.encode()
_BACKSLASH = 0x5C


def json_forms(secret: str) -> set[bytes]:
    """How ``secret`` appears inside a JSON string: orjson's escaping and ``json.dumps``' ASCII one."""
    return {orjson.dumps(secret)[1:-1], json.dumps(secret)[1:-1].encode()}


class Redactor:
    """Replaces every known secret with ``[redacted]``."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        self._known: set[str] = set()
        self._text: list[str] = []  # longest first, so a secret holding another is masked whole
        self._json: list[bytes] = []
        for secret in secrets or []:
            self.add(secret)

    def __bool__(self) -> bool:
        return bool(self._known)

    def add(self, secret: str | None) -> None:
        """Remember ``secret`` (ignored when empty)."""
        if not secret or secret in self._known:
            return
        self._known.add(secret)
        self._text = sorted(self._known, key=len, reverse=True)
        forms = {form for known in self._known for form in json_forms(known)}
        self._json = sorted(forms, key=len, reverse=True)

    def scrub(self, data: bytes) -> bytes:
        """JSON text ``data`` (a body, an event, a record line) with every secret masked.

        Returns ``data`` itself when there is nothing to mask. A match that
        starts inside an escape sequence (``\\n`` followed by a secret's tail
        beginning with ``n``) is not the secret, and masking it would break
        the JSON, so it is left alone.
        """
        for form in self._json:
            if form in data:
                data = _mask_json(data, form)
        return data

    def scrub_text(self, text: str) -> str:
        """``text`` with every secret masked."""
        for secret in self._text:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


def _mask_json(data: bytes, form: bytes) -> bytes:
    """``data`` with each ``form`` that starts on an escape boundary replaced by the mask."""
    pieces: list[bytes] = []
    start = 0
    found = data.find(form)
    while found != -1:
        before = found
        while before > start and data[before - 1] == _BACKSLASH:
            before -= 1
        # An odd run of backslashes means ``found`` is the escaped character of an escape.
        # (``start`` is always on an escape boundary, so the run is counted from there.)
        if (found - before) % 2 == 0:
            pieces += [data[start:found], _MASK_BYTES]
            start = found + len(form)
            found = data.find(form, start)
        else:
            found = data.find(form, found + 1)
    if not pieces:
        return data
    pieces.append(data[start:])
    return b"".join(pieces)


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in every message it passes, tracebacks included."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        scrub = self.redactor.scrub_text
        record.msg = scrub(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            # Formatters append the traceback (with the exception's message) after filters ran:
            # render it now, scrubbed, and leave formatters only the scrubbed text.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True
