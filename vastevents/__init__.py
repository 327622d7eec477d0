"""vastevents: watch a Vast.ai account and turn instance changes into typed events for handlers."""

from __future__ import annotations

__version__ = "0.1.0"

from vastevents.config import Duration
from vastevents.context import Context
from vastevents.diff import Rules, diff, observe
from vastevents.errors import (
    AmbiguousCreate,
    ApiError,
    AuthError,
    ConfigError,
    NoSuchAsk,
    NotFound,
    NotOwned,
    PermanentError,
    QueryError,
    RateLimited,
    TemporaryError,
    VastEventsError,
)
from vastevents.events import Cause, Event
from vastevents.jobspec import JobSpec, load_spec, unpack_dir
from vastevents.models import Instance, Offer, Rental, State
from vastevents.notify import (
    BotTransport,
    ChatMessage,
    ChatTransport,
    PermanentSendError,
    Posted,
    SendError,
    TransientSendError,
    WebhookTransport,
)
from vastevents.notify.apprise import AppriseTransport
from vastevents.notify.chat_webhook import JsonWebhookTransport
from vastevents.plugins import Handler, HandlerFunc, HandlerOptions, daemon, every, on
from vastevents.ports import CommandResult, Notifier, Ssh, SshTarget, VastApi
from vastevents.query import parse_query
from vastevents.runtime import Runtime
from vastevents.snapshot import InstanceView, Snapshot
from vastevents.store import Conn, Database, Job, Jobs, JobStatus, Migration, SqliteStore, Store
from vastevents.store.hosts import HostRecord, Hosts
from vastevents.store.ledger import Interval, Ledger, LedgerInstance, hourly_rate, job_id_of
from vastevents.store.outbox import Outbox, OutboxMessage
from vastevents.store.recoveries import Recoveries, Recovery, RecoveryStatus
from vastevents.store.vast_webhooks import WebhookDeliveries
from vastevents.vast import VastClient

__all__ = [
    "AmbiguousCreate",
    "ApiError",
    "AppriseTransport",
    "AuthError",
    "BotTransport",
    "Cause",
    "ChatMessage",
    "ChatTransport",
    "CommandResult",
    "ConfigError",
    "Conn",
    "Context",
    "Database",
    "Duration",
    "Event",
    "Handler",
    "HandlerFunc",
    "HandlerOptions",
    "HostRecord",
    "Hosts",
    "Instance",
    "InstanceView",
    "Interval",
    "Job",
    "JobSpec",
    "JobStatus",
    "Jobs",
    "JsonWebhookTransport",
    "Ledger",
    "LedgerInstance",
    "Migration",
    "NoSuchAsk",
    "NotFound",
    "NotOwned",
    "Notifier",
    "Offer",
    "Outbox",
    "OutboxMessage",
    "PermanentError",
    "PermanentSendError",
    "Posted",
    "QueryError",
    "RateLimited",
    "Recoveries",
    "Recovery",
    "RecoveryStatus",
    "Rental",
    "Rules",
    "Runtime",
    "SendError",
    "Snapshot",
    "SqliteStore",
    "Ssh",
    "SshTarget",
    "State",
    "Store",
    "TemporaryError",
    "TransientSendError",
    "VastApi",
    "VastClient",
    "VastEventsError",
    "WebhookDeliveries",
    "WebhookTransport",
    "__version__",
    "daemon",
    "diff",
    "every",
    "hourly_rate",
    "job_id_of",
    "load_spec",
    "observe",
    "on",
    "parse_query",
    "unpack_dir",
]
