"""Secrets never reach a log line: registered values and well-known secret shapes are masked."""

from __future__ import annotations

import logging

import pytest

from vastevents._logging import REDACTED, RedactingFormatter, redact, register_secret


def test_registered_secret_is_masked_everywhere() -> None:
    register_secret("s3cr3t-api-key-value")
    assert redact("key=s3cr3t-api-key-value and again s3cr3t-api-key-value") == f"key={REDACTED} and again {REDACTED}"


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("Authorization: Bearer abcdef123456", "abcdef123456"),
        ("GET /api/v0/instances/?api_key=abcdef123456&owner=me", "abcdef123456"),
        ("posting to https://hooks.slack.com/services/T000/B000/XXXXXXXX", "T000/B000/XXXXXXXX"),
        ("token xoxb-1234-5678-abcdef", "1234-5678-abcdef"),
    ],
)
def test_secret_shapes_are_masked_without_registration(text: str, leak: str) -> None:
    masked = redact(text)
    assert leak not in masked
    assert REDACTED in masked


def test_formatter_redacts_arguments() -> None:
    register_secret("another-secret-key")
    record = logging.LogRecord("vastevents", logging.DEBUG, __file__, 1, "sent %s", ("another-secret-key",), None)
    assert "another-secret-key" not in RedactingFormatter("%(message)s").format(record)
