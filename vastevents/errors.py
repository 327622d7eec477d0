"""The error hierarchy users see. Every message says what to do next and never carries a secret."""

from __future__ import annotations


class VastEventsError(Exception):
    """Base of every error vastevents raises on purpose."""


class ConfigError(VastEventsError):
    """The configuration file or environment is wrong; the message names the file, key and line."""


class ApiError(VastEventsError):
    """The Vast API answered with an error (or something that is not its JSON)."""

    def __init__(self, message: str, *, status_code: int | None = None, error: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error = error


class AuthError(ApiError):
    """401/403: the API key is missing or wrong."""


class NotFound(ApiError):
    """404/410 for an object (instance, route) that does not exist."""


class NoSuchAsk(ApiError):
    """The offer was rented by someone else first; try the next offer."""


class AmbiguousCreate(ApiError):
    """A create whose outcome is unclear: an instance may exist although the call failed.

    `instance_id` is set when Vast named one (``success: false`` with ``new_contract``); otherwise (a 5xx or a
    lost connection mid-request) it is None. Either way, destroy or adopt it by reconciling on the label.
    """

    def __init__(self, message: str, *, instance_id: int | None = None, status_code: int | None = None,
                 error: str | None = None) -> None:  # fmt: skip
        super().__init__(message, status_code=status_code, error=error)
        self.instance_id = instance_id


class RateLimited(ApiError):
    """429 after every retry; `retry_after` is the server's hint in seconds, if it gave one."""

    def __init__(self, message: str, *, retry_after: float | None = None, status_code: int | None = 429) -> None:
        super().__init__(message, status_code=status_code, error="rate_limited")
        self.retry_after = retry_after


class QueryError(VastEventsError):
    """An offer query (`gpu_ram>=24 num_gpus=1 ...`) could not be parsed."""


class TemporaryError(VastEventsError):
    """Raised by a handler: deliver this event to me again after `delay` seconds.

    Attempts are persisted with the delivery marks; after ``[watch] max_attempts`` the event becomes a
    ``handler_failed`` report instead.
    """

    def __init__(self, message: str = "", *, delay: float = 60.0) -> None:
        super().__init__(message)
        self.delay = max(0.0, float(delay))


class PermanentError(VastEventsError):
    """Raised by a handler: this event cannot be handled; report ``handler_failed`` now, never retry."""


class NotLeader(VastEventsError):
    """This watcher does not (or no longer) lead its team's shared store; it must not act (see ``[team]``)."""


class NotOwned(VastEventsError):
    """A handler asked to act on an instance vastevents does not own (label prefix); nothing was sent."""


class SshError(VastEventsError):
    """The host cannot be reached, refused us, or a transfer failed; the message says which."""


class HostKeyMismatch(SshError):
    """The instance presented another SSH host key than the one recorded on first use: it is not the host it
    was (rebuilt, or something in between). Permanent for that instance; never retried.

    `presented` and `recorded` are fingerprints (``ssh-ed25519 SHA256:...``), safe to log.
    """

    def __init__(self, alias: str, *, presented: str, recorded: str) -> None:
        super().__init__(
            f"{alias} presented the host key {presented}, not {recorded} recorded on first use; refusing to connect"
        )
        self.alias = alias
        self.presented = presented
        self.recorded = recorded
