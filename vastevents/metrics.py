"""Prometheus metrics of one watcher, through prometheus-client (``watch --metrics-listen HOST:PORT``).

Fed by the runtime: each poll (duration, pages, failures by kind, instances by state, spend rate) and each
journaled event (by name; handler failures by handler). Gauges another part owns (outbox backlog, accrued
spend) are set through :meth:`Metrics.gauge`.
"""

from __future__ import annotations

import math
import threading
from collections import Counter as Tally
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from vastevents.events import HANDLER_FAILED, Event
from vastevents.models import State
from vastevents.snapshot import Snapshot

PAGE_SIZE = 25
"""Instances per list page (Vast's page size; one request each)."""


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.polls = Counter("vastevents_polls", "Successful polls of the instance list.", registry=r)
        self.poll_seconds = Histogram(
            "vastevents_poll_duration_seconds", "Time to list every instance (all pages).", registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip
        self.pages = Counter("vastevents_list_pages", "Instance list pages requested by successful polls.", registry=r)
        self.api_errors = Counter("vastevents_api_errors", "Failed polls by kind of error.", ["kind"], registry=r)
        self.instances = Gauge("vastevents_instances", "Instances on the account by state.", ["state"], registry=r)
        self.events = Counter("vastevents_events", "Journaled events by name.", ["name"], registry=r)
        self.handler_failures = Counter(
            "vastevents_handler_failures", "handler_failed events by handler.", ["handler"], registry=r
        )
        self.spend_rate = Gauge("vastevents_spend_rate_usd_per_hour", "Sum of $/h of running instances.", registry=r)
        self.accrued = Gauge("vastevents_accrued_spend_usd", "Accrued spend of owned instances (ledger).", registry=r)
        self.outbox = Gauge("vastevents_outbox_backlog", "Notifications waiting to be sent.", registry=r)
        self.leader = Gauge("vastevents_leader", "1 while this watcher leads (or runs alone), else 0.", registry=r)
        self.leader.set(1)

    def polled(self, snapshot: Snapshot | None, seconds: float, error: Exception | None) -> None:
        if snapshot is None:
            self.api_errors.labels(kind=type(error).__name__ if error is not None else "unknown").inc()
            return
        self.polls.inc()
        self.poll_seconds.observe(seconds)
        self.pages.inc(max(1, math.ceil(len(snapshot) / PAGE_SIZE)))
        states = Tally(view.state.value for view in snapshot.views.values())
        for state in State:
            self.instances.labels(state=state.value).set(states.get(state.value, 0))
        self.spend_rate.set(
            sum(view.instance.dph_total or 0.0 for view in snapshot.views.values() if view.state is State.RUNNING)
        )

    def journaled(self, event: Event) -> None:
        self.events.labels(name=event.name).inc()
        if event.name == HANDLER_FAILED:
            self.handler_failures.labels(handler=event.detail.split(" ", 1)[0] or "unknown").inc()

    def serve(self, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
        """Serve ``/metrics`` (Prometheus text) on `host`:`port` in a thread; shut the server down when done."""
        return start_http_server(port, addr=host, registry=self.registry)
