"""vastevents: watch a Vast.ai account and turn instance changes into typed events for handlers."""

from __future__ import annotations

__version__ = "0.1.0"

from vastevents.errors import (
    AmbiguousCreate,
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
from vastevents.query import parse_query
from vastevents.vast import VastClient

__all__ = [
    "AmbiguousCreate",
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
    "VastClient",
    "VastEventsError",
    "__version__",
    "parse_query",
]
