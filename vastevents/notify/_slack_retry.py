"""slack-sdk's retry handlers as the Slack transports use them; imported with slack-sdk, when a message is sent."""

from __future__ import annotations

from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState

from vastevents.notify import _retry_after


class _BoundedRateLimitRetryHandler(RateLimitErrorRetryHandler):
    """slack-sdk's 429 handler, but only for a short ``Retry-After``: a long one is left to the outbox."""

    def __init__(self, max_retry_count: int, max_wait: float) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if response is None or response.status_code != 429:
            return False
        wait = _retry_after(response.headers)
        return wait is None or wait <= self.max_wait


def retry_handlers(retries: int, *, max_rate_limit_wait: float = 5.0) -> list[RetryHandler]:
    """slack-sdk's retry handlers: connection errors, 5xx, and 429 with a Retry-After up to `max_rate_limit_wait`."""
    return [
        ConnectionErrorRetryHandler(max_retry_count=retries),
        ServerErrorRetryHandler(max_retry_count=retries),
        _BoundedRateLimitRetryHandler(retries, max_rate_limit_wait),
    ]
