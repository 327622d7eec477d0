"""Logging setup with secret redaction.

Secrets are scrubbed in two ways: any value passed to :func:`register_secret` (the API key, a webhook URL,
a bot token) is replaced wherever it appears, and well-known shapes (``Bearer ...``, ``api_key=...``,
Slack webhook URLs and tokens) are masked even if nobody registered them.
"""

from __future__ import annotations

import logging
import re
import sys
import threading

REDACTED = "***"

_PATTERNS = [
    (re.compile(r"(?i)(bearer\s+)[^\s'\",]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)(api_key=)[^&\s'\",]+"), r"\1" + REDACTED),
    (re.compile(r"https://hooks\.slack\.com/[^\s'\"]+"), "https://hooks.slack.com/" + REDACTED),
    (re.compile(r"xox[abposr]-[A-Za-z0-9-]+"), "xox?-" + REDACTED),
]

_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a secret so that :func:`redact` removes it from every log line and error message."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """Return `text` with every registered secret and every known secret shape masked."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure_logging(*, debug: bool = False) -> None:
    """Send vastevents' logs to stderr, redacted; `debug` also logs every HTTP request (httpx's one line each).

    The loggers keep propagating so that an embedding application (or pytest's caplog) still sees records.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    ours = logging.getLogger("vastevents")
    ours.handlers[:] = [handler]
    ours.setLevel(logging.DEBUG if debug else logging.INFO)
    httpx_logger = logging.getLogger("httpx")
    httpx_logger.handlers[:] = [handler] if debug else []
    httpx_logger.setLevel(logging.INFO if debug else logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def adopt_logger(name: str, level: int = logging.WARNING) -> None:
    """Send another library's records (`level` and up) through vastevents' redacting stderr handler only."""
    logger = logging.getLogger(name)
    logger.handlers[:] = logging.getLogger("vastevents").handlers
    logger.setLevel(level)
    logger.propagate = False


def without_password(url: str) -> str:
    """`url` with any password replaced, for messages (``postgresql://team:***@db/vastevents``)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:" + REDACTED + "@", url)
