"""vastevents: watch a Vast.ai account and turn instance changes into typed events for handlers.

This package's names are the API a handler author writes against, and only that (``__all__``; a test keeps the
two equal): the decorators and the context, the values handlers receive and make, the errors that say what
happened, the edges a context carries, the repository API for a plugin's own tables and the built-in
repositories handlers share, and the chat transports notifier plugins post through. Everything else (the runtime,
the client, the stores, the diff, the CLI) is importable from its module but is not promised to plugins;
``vastevents.testing`` is the other public module.
"""

__version__ = "0.1.0"

from vastevents.choosing import Estimate, HostStats, Kind, Ranking, Strategy, Workload, rank
from vastevents.config import Duration, format_duration
from vastevents.context import Context
from vastevents.errors import (
    AmbiguousCreate,
    ApiError,
    AuthError,
    HostKeyMismatch,
    NoSuchAsk,
    NotFound,
    NotOwned,
    PermanentError,
    QueryError,
    RateLimited,
    SshError,
    TemporaryError,
    VastEventsError,
)
from vastevents.events import Cause, Event
from vastevents.jobspec import JobSpec, unpack_dir
from vastevents.models import Instance, Offer, Rental, State, Volume, VolumeMount
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
from vastevents.snapshot import InstanceView, Snapshot
from vastevents.store import Conn, Database, Job, JobPhase, Jobs, JobStatus, Migration, Store, Terms
from vastevents.store.history import HostHistory
from vastevents.store.hosts import HostRecord, Hosts
from vastevents.store.ledger import Interval, Ledger, LedgerInstance, job_id_of
from vastevents.store.outbox import Outbox, OutboxMessage
from vastevents.store.recoveries import Recoveries, Recovery, RecoveryStatus

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
    "Conn",
    "Context",
    "Database",
    "Duration",
    "Estimate",
    "Event",
    "Handler",
    "HandlerFunc",
    "HandlerOptions",
    "HostHistory",
    "HostKeyMismatch",
    "HostRecord",
    "HostStats",
    "Hosts",
    "Instance",
    "InstanceView",
    "Interval",
    "Job",
    "JobPhase",
    "JobSpec",
    "JobStatus",
    "Jobs",
    "JsonWebhookTransport",
    "Kind",
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
    "Ranking",
    "RateLimited",
    "Recoveries",
    "Recovery",
    "RecoveryStatus",
    "Rental",
    "SendError",
    "Snapshot",
    "Ssh",
    "SshError",
    "SshTarget",
    "State",
    "Store",
    "Strategy",
    "TemporaryError",
    "Terms",
    "TransientSendError",
    "VastApi",
    "VastEventsError",
    "Volume",
    "VolumeMount",
    "WebhookTransport",
    "Workload",
    "__version__",
    "daemon",
    "every",
    "format_duration",
    "job_id_of",
    "on",
    "rank",
    "unpack_dir",
]
