"""vastevents: watch a Vast.ai account and turn instance changes into typed events for handlers."""

from __future__ import annotations

__version__ = "0.1.0"

from vastevents.diff import Rules, diff, observe
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
from vastevents.events import Event
from vastevents.models import Instance, Offer, State
from vastevents.plugins import Context, Handler, HandlerFunc, HandlerOptions, Notifier, on
from vastevents.query import parse_query
from vastevents.snapshot import InstanceView, Snapshot
from vastevents.store import SqliteStore, Store
from vastevents.vast import VastClient
from vastevents.watcher import Watcher

__all__ = [
    "AmbiguousCreate",
    "ApiError",
    "AuthError",
    "ConfigError",
    "Context",
    "Event",
    "Handler",
    "HandlerFunc",
    "HandlerOptions",
    "Instance",
    "InstanceView",
    "NoSuchAsk",
    "NotFound",
    "Notifier",
    "Offer",
    "QueryError",
    "RateLimited",
    "Rules",
    "Snapshot",
    "SqliteStore",
    "State",
    "Store",
    "VastClient",
    "VastEventsError",
    "Watcher",
    "__version__",
    "diff",
    "observe",
    "on",
    "parse_query",
]
