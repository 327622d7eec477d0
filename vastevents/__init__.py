"""vastevents: watch a Vast.ai account and turn instance changes into typed events for handlers."""

from __future__ import annotations

__version__ = "0.1.0"

from vastevents.errors import (
    ApiError,
    AuthError,
    ConfigError,
    NoSuchAsk,
    NotFound,
    QueryError,
    RateLimited,
    VastEventsError,
)
from vastevents.models import Instance, Offer, State

__all__ = [
    "ApiError",
    "AuthError",
    "ConfigError",
    "Instance",
    "NoSuchAsk",
    "NotFound",
    "Offer",
    "QueryError",
    "RateLimited",
    "State",
    "VastEventsError",
    "__version__",
]
