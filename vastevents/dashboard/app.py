"""The dashboard's Starlette application: one page per route, rendered on the server from a read-only store."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from typing import Any, cast
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from vastevents._logging import redact
from vastevents.config import Config
from vastevents.connect import vast_client
from vastevents.costs import Charge, GroupBy, InstanceCost, account_side
from vastevents.dashboard import charts, params
from vastevents.dashboard.feed import Feed
from vastevents.dashboard.reads import PAGE, Reads, default_range, safe_event
from vastevents.dashboard.security import COOKIE, MAX_FORM_BYTES, Guard, local_path, login_form, security_headers
from vastevents.events import APPEARED, RUNTIME_EVENTS, SEMANTIC_EVENTS, VANISHED
from vastevents.store import Database

EVENT_NAMES = sorted({APPEARED, VANISHED, *SEMANTIC_EVENTS, *RUNTIME_EVENTS, "job_started", "job_finished",
                      "job_failed", "recovered", "recovery_failed", "host_blocked", "budget_warning",
                      "budget_exceeded", "reaped", "notification_failed"})  # fmt: skip
"""Suggested in the events filter (any name is accepted: handlers declare their own)."""
MAX_DAYS = 400
"""The longest range the cost page draws day by day."""
CHARGES_TTL = 60.0
"""Seconds Vast's charges for one range are reused before they are read again."""

Page = Callable[[Request], Awaitable[Response]]


def _money(value: float | None) -> str:
    if value is None:
        return "–"
    sign = "-" if value < 0 else ""
    magnitude = abs(value)
    if magnitude >= 0.01 or magnitude == 0:
        return f"{sign}${magnitude:,.2f}"
    return f"{sign}${magnitude:.4f}"


def _when(value: datetime | None) -> str:
    return "–" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def _environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("vastevents.dashboard", "templates"), autoescape=True, undefined=StrictUndefined
    )
    environment.filters.update(
        money=_money,
        when=_when,
        iso=_iso,
        duration=_duration,
        redact=lambda text: redact(text) if text else "",
        event_json=lambda event: json.dumps(safe_event(event), indent=2),
    )
    return environment


class VastCharges:
    """Vast's charges and instance list for a range, read with the API key when this machine has one, kept a
    minute (the pages must stay fast and the API is not hammered by reloads)."""

    def __init__(self, config: Config, api_key: str | None) -> None:
        self.config = config
        self.api_key = api_key
        self._cache: dict[tuple[datetime, datetime], tuple[float, dict[int, Charge] | str, set[int] | str]] = {}

    async def read(
        self, since: datetime, until: datetime
    ) -> tuple[dict[int, Charge] | None, set[int] | None, str | None]:
        """(charges, listed ids, why the charges are missing)."""
        if self.api_key is None:
            return None, None, "no Vast API key on this machine (VAST_API_KEY): the ledger alone is shown"
        key = (since, until)
        cached = self._cache.get(key)
        if cached is None or time.monotonic() - cached[0] > CHARGES_TTL:
            try:
                charges, listed = await asyncio.wait_for(self._read(since, until), 20)
            except TimeoutError:
                charges = listed = "Vast did not answer within 20 s"
            self._cache = {k: v for k, v in self._cache.items() if time.monotonic() - v[0] <= CHARGES_TTL}
            cached = self._cache[key] = (time.monotonic(), charges, listed)
        _, charges, listed = cached
        if isinstance(charges, str):
            return None, None, f"cannot read Vast's charges ({redact(charges)}): the ledger alone is shown"
        return charges, listed if isinstance(listed, set) else None, None

    async def _read(self, since: datetime, until: datetime) -> tuple[dict[int, Charge] | str, set[int] | str]:
        assert self.api_key is not None
        async with vast_client(self.config, self.api_key, max_attempts=3, max_wait=2.0) as client:
            return await account_side(client, since, until)


class Dashboard:
    def __init__(self, config: Config, db: Database, *, token: str | None, api_key: str | None) -> None:
        self.config = config
        self.db = db
        self.reads = Reads(db, config)
        self.feed = Feed(db)
        self.charges = VastCharges(config, api_key)
        self.token = token
        self.templates = _environment()
        self.style = (files("vastevents.dashboard") / "static" / "style.css").read_text(encoding="utf-8")
        self.store = config.store.describe()

    # --- plumbing -----------------------------------------------------------------------------------------

    def render(self, name: str, *, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.templates.get_template(name).render(
            style=Markup(self.style),  # noqa: S704 - the package's own stylesheet, allowed by its hash
            store=self.store,
            now=datetime.now(UTC),
            **context,
        )
        return HTMLResponse(html, status_code=status)

    def page(self, handler: Page) -> Page:
        """`handler` with a bad parameter answered 400 and an unreadable store 503, each as one line."""

        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except params.BadParameter as exc:
                return PlainTextResponse(f"{exc}\n", status_code=400)
            except self.feed.failures as exc:
                message = redact(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__
                return PlainTextResponse(f"the store cannot be read: {message}\n", status_code=503)

        return endpoint

    async def read(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(function, *args, **kwargs)

    # --- pages --------------------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        params.allowed(request.query_params, ())
        overview = await self.read(self.reads.overview, datetime.now(UTC))
        return self.render("overview.html", section="/", live=True, o=overview)

    async def jobs(self, request: Request) -> Response:
        query = params.allowed(request.query_params, ("page",))
        page = params.page(query.get("page"))
        rows = await self.read(self.reads.job_rows, page, datetime.now(UTC))
        return self.render(
            "jobs.html", section="/jobs", live=page == 1, rows=rows[:PAGE], page=page, more=len(rows) > PAGE,
            query=lambda n: urlencode({"page": n}),
        )  # fmt: skip

    async def job(self, request: Request) -> Response:
        params.allowed(request.query_params, ())
        job_id = params.integer("job id", request.path_params["job_id"])
        found = await self.read(self.reads.job, job_id, datetime.now(UTC))
        if found is None:
            return PlainTextResponse(f"no job {job_id} in this store\n", status_code=404)
        return self.render("job.html", section="/jobs", live=True, p=found)

    async def events(self, request: Request) -> Response:
        query = params.allowed(request.query_params, ("name", "instance", "since", "until", "page"))
        name = params.event_name(query["name"]) if "name" in query else None
        instance = params.integer("instance", query["instance"]) if "instance" in query else None
        since = params.moment("since", query["since"]) if "since" in query else None
        until = params.moment("until", query["until"]) if "until" in query else None
        if since is not None and until is not None and since >= until:
            raise params.BadParameter("since must be before until")
        page = params.page(query.get("page"))
        found = await self.read(self.reads.events, name=name, instance=instance, since=since, until=until, page=page)
        filters = {
            "name": name,
            "instance": instance,
            "since_text": query.get("since"),
            "until_text": query.get("until"),
        }
        kept = {k: v for k, v in query.items() if k != "page"}
        return self.render(
            "events.html", section="/events", live=page == 1, events=found[:PAGE], more=len(found) > PAGE, page=page,
            f=filters, names=EVENT_NAMES, query=lambda n: urlencode({**kept, "page": n}),
        )  # fmt: skip

    async def cost(self, request: Request) -> Response:
        query = params.allowed(request.query_params, ("since", "until", "by", "page"))
        by = cast(GroupBy, params.choice("by", query.get("by"), ("day", "instance", "job")))
        page = params.page(query.get("page"))
        now = datetime.now(UTC)
        first = await self.read(self.reads.first_spend)
        start, end = default_range(now, first)
        since = params.moment("since", query["since"]) if "since" in query else start
        until = params.moment("until", query["until"]) if "until" in query else end
        if since >= until:
            raise params.BadParameter("since must be before until")
        if by == "day" and until - since > timedelta(days=MAX_DAYS):
            raise params.BadParameter(f"a range of at most {MAX_DAYS} days can be shown by day")
        charged, listed, vast_note = await self.charges.read(since, until)
        report = await self.read(
            self.reads.cost, since=since, until=until, by=by, now=now, charged=charged, listed=listed,
            charges_error=vast_note,
        )  # fmt: skip
        groups = _days(report.groups, since, until) if by == "day" else charts.largest(report.groups)
        rows = sorted(report.instances, key=_cost_order)
        chosen = rows[(page - 1) * PAGE : page * PAGE]
        kept = {k: v for k, v in query.items() if k != "page"}
        return self.render(
            "cost.html", section="/cost", live=page == 1, report=report, rows=chosen, more=len(rows) > page * PAGE,
            page=page, by=by, chart=charts.bar_chart(groups), vast_note=vast_note,
            since_text=_short(since), until_text=_short(until), query=lambda n: urlencode({**kept, "page": n}),
        )  # fmt: skip

    async def hosts(self, request: Request) -> Response:
        query = params.allowed(request.query_params, ("page",))
        page = params.page(query.get("page"))
        found = await self.read(self.reads.host_records, page, datetime.now(UTC))
        return self.render(
            "hosts.html", section="/hosts", live=page == 1, hosts=found[:PAGE], more=len(found) > PAGE, page=page,
            query=lambda n: urlencode({"page": n}),
        )  # fmt: skip

    async def healthz(self, request: Request) -> Response:
        params.allowed(request.query_params, ())
        last = await self.read(self.reads.last_event_id)
        return JSONResponse({"status": "ok", "last_event_id": last, "backend": self.db.dialect})

    async def stream(self, request: Request) -> Response:
        params.allowed(request.query_params, ())
        resume = request.headers.get("last-event-id", "").strip()
        after = params.integer("Last-Event-ID", resume) if resume else None

        async def messages() -> AsyncIterator[dict[str, str]]:
            async for event in self.feed.events(after):
                yield {"id": str(event.id), "data": json.dumps(safe_event(event), separators=(",", ":"))}

        return EventSourceResponse(messages(), ping=15, send_timeout=30)

    async def login(self, request: Request) -> Response:
        if self.token is None:
            return RedirectResponse("/", status_code=303)
        if request.method == "GET":
            query = params.allowed(request.query_params, ("next",))
            return self.render("login.html", next=local_path(query.get("next")), wrong=False)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return PlainTextResponse("the login form is too large\n", status_code=413)
        token, after = login_form(body)
        if not self.guard_accepts(token):
            return self.render("login.html", status=401, next=local_path(after), wrong=True)
        response = RedirectResponse(local_path(after), status_code=303)
        response.set_cookie(
            COOKIE, self.session, httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/"
        )
        return response

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        """401: the login form, which brings the reader back to the page asked for."""
        request = Request(scope)
        wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = self.render("login.html", status=401, next=local_path(wanted), wrong=False)
        response.headers["www-authenticate"] = 'Bearer realm="vastevents dashboard"'
        await response(scope, receive, send)

    def guard_accepts(self, token: str) -> bool:
        return self._guard.accepts(token)

    @property
    def session(self) -> str:
        return self._guard.session

    # --- the application ----------------------------------------------------------------------------------

    def app(self) -> Guard:
        @asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            self.feed.start()
            try:
                yield
            finally:
                await asyncio.to_thread(self.feed.stop)

        routes = [
            Route("/", self.page(self.overview)),
            Route("/jobs", self.page(self.jobs)),
            Route("/jobs/{job_id}", self.page(self.job)),
            Route("/events", self.page(self.events)),
            Route("/cost", self.page(self.cost)),
            Route("/hosts", self.page(self.hosts)),
            Route("/healthz", self.page(self.healthz)),
            Route("/stream", self.page(self.stream)),
            Route("/login", self.page(self.login), methods=["GET", "POST"]),
            Mount("/static", StaticFiles(packages=[("vastevents.dashboard", "static")])),
        ]
        starlette = Starlette(routes=routes, lifespan=lifespan)
        self._guard = Guard(starlette, token=self.token, refuse=self.refuse, headers=security_headers(self.style))
        return self._guard


def create_app(config: Config, db: Database, *, token: str | None = None, api_key: str | None = None) -> Guard:
    """The dashboard over `db` (opened read-only); with `token`, every request but the login form needs it."""
    return Dashboard(config, db, token=token, api_key=api_key).app()


def _days(groups: tuple[tuple[str, float], ...], since: datetime, until: datetime) -> list[tuple[str, float]]:
    """Every UTC day of [since, until), with the days nothing was spent on at $0."""
    spent = dict(groups)
    day, last = since.astimezone(UTC).date(), (until.astimezone(UTC) - timedelta(microseconds=1)).date()
    out = []
    while day <= last:
        out.append((day.isoformat(), spent.get(day.isoformat(), 0.0)))
        day += timedelta(days=1)
    return out


def _cost_order(row: InstanceCost) -> tuple[bool, float, int]:
    """Ghost billing first, then the largest spend."""
    return (row.ghost is None, -row.cost_usd, row.instance_id)


def _short(at: datetime) -> str:
    at = at.astimezone(UTC)
    return at.strftime("%Y-%m-%d") if at.time() == datetime.min.time() else at.strftime("%Y-%m-%dT%H:%M")
