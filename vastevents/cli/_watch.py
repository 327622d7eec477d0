"""``vastevents watch``, ``events`` and ``handlers``: the watcher loop, the journal and the plugins."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from vastevents._logging import redact
from vastevents.cli._app import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    ConfigOption,
    app,
    existing_store,
    fail,
    logs_through,
)
from vastevents.cli._format import plural
from vastevents.clock import ManualClock
from vastevents.config import Config, StoreConfig, load_config, with_sections
from vastevents.errors import AuthError, ConfigError, VastEventsError
from vastevents.events import (
    APPEARED,
    HANDLER_FAILED,
    POLL_FAILED,
    SEMANTIC_EVENTS,
    VANISHED,
    Event,
    is_known_event_name,
    subscriptions_hearing,
)
from vastevents.journaling import EventObserver
from vastevents.plugins import ActiveHandler, installed_handlers, load_handlers
from vastevents.runtime import Runtime
from vastevents.store import Store, StoreError
from vastevents.store.team import TeamMembers
from vastevents.vast_webhooks import parse_listen
from vastevents.watcher import Watcher, WatchStatus

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from vastevents.metrics import Metrics

ROLE_CHECK_SECONDS = 0.5
"""How often a team's watcher looks at the roster to say when it stands by or takes over."""
SIM_POLL_SECONDS = 0.5
"""Real seconds between the polls of ``watch --sim`` by default (``--pace``)."""
SIM_STEPS = 40
"""How many equal steps of simulated time ``watch --sim`` cuts its scenario into (one poll each)."""

JsonlOption = Annotated[
    str | None,
    typer.Option(
        "--jsonl",
        metavar="PATH|-",
        help="Append each new event as one JSON object per line to PATH ('-': stdout), in journal order.",
    ),
]


def _load(config_path: Path | None) -> Config:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        fail(str(exc), 2)


# --- output -------------------------------------------------------------------------------------------------


class JsonlSink:
    """Appends events as JSON lines, in journal order, each exactly once.

    A file that already holds events resumes after its last id, first catching up with everything the
    journal got since (e.g. events a killed watcher committed but never wrote). A torn last line left by
    a kill is cut off.
    """

    def __init__(self, target: str) -> None:
        self._last: int | None = None
        if target == "-":
            self._file: IO[str] = sys.stdout
            self._owned = False
            return
        path = Path(target).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._last = _repair_and_last_id(path)
        self._file = path.open("a", encoding="utf-8")
        self._owned = True

    def catch_up(self, store: Store) -> None:
        """Write what the journal got after the file's last event (nothing for a new file)."""
        if self._last is not None:
            for event in store.events(since=self._last):
                self(event)

    def __call__(self, event: Event) -> None:
        if self._last is not None and event.id <= self._last:
            return
        self._file.write(json.dumps(event.to_json(), separators=(",", ":")) + "\n")
        self._file.flush()
        self._last = event.id

    def close(self) -> None:
        if self._owned:
            self._file.close()


def _repair_and_last_id(path: Path) -> int | None:
    """The id of the last complete line of a JSONL file (None if empty or new); drops a torn last line."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with path.open("rb+") as file:
        size = file.seek(0, os.SEEK_END)
        start = max(0, size - (1 << 16))
        file.seek(start)
        tail = file.read()
        if not tail.endswith(b"\n"):
            keep = tail.rfind(b"\n") + 1
            file.truncate(start + keep)
            tail = tail[:keep]
    for line in reversed(tail.splitlines()):
        with contextlib.suppress(ValueError, TypeError):
            event_id = json.loads(line)["id"]
            if isinstance(event_id, int):
                return event_id
    return None


_STYLES = {APPEARED: "green", VANISHED: "red", HANDLER_FAILED: "bold red", POLL_FAILED: "bold red"}


def _event_text(event: Event) -> Text:
    style = _STYLES.get(event.name, "bold yellow" if event.name in SEMANTIC_EVENTS else "cyan")
    text = Text()
    text.append(event.at.strftime("%H:%M:%S"), style="dim")
    text.append(f"  #{event.id:<4} ")
    text.append(f"{event.name:<22}", style=style)
    if event.instance_id is not None:
        text.append(f" {event.instance_id}")
    instance = event.instance
    if instance is not None:
        if instance.label:
            text.append(f" {instance.label}", style="bold")
        if instance.gpu_name:
            text.append(f" ({instance.gpu_name})", style="dim")
    if event.raw is not None:
        text.append(f" raw status {event.raw!r}", style="magenta")
    if event.catch_up:
        text.append(" catch-up", style="magenta")
    if event.detail:
        text.append(f"  {event.detail}", style="dim")
    return text


def _status_text(status: WatchStatus) -> Text:
    text = Text(f"polls {status.polls} · instances {status.instances} · events {status.events}", style="dim")
    if status.last_poll is not None:
        text.append(f" · last poll {status.last_poll.strftime('%H:%M:%S')}", style="dim")
    if status.error:
        text.append(f" · poll failing ({status.failures}x): {status.error}", style="bold red")
    text.append(f" · next in {status.next_delay:.0f}s" if status.next_delay >= 1 else "", style="dim")
    return text


LOG = "log"
"""The built-in handler that logs events: with it active, the screen does not print them a second time."""

_READ_ON_TERMINAL: set[str] = set()
"""Poll failures this run's screen printed on the terminal that also shows stderr: the exit line skips them."""


class _Screen:
    """Event lines on a console, plus a live status line when that console is a terminal.

    An event a ``log`` handler logs is left to its log line (both on this console), so each shows once.
    """

    def __init__(self, console: Console, *, live: bool) -> None:
        self.console = console
        self._live = Live(console=console, transient=True, auto_refresh=False) if live else None
        self._with_stderr = console.is_terminal and sys.stderr.isatty()
        self._logged: set[str] = set()
        _READ_ON_TERMINAL.clear()

    def leave_to_the_log(self, handlers: Sequence[ActiveHandler]) -> None:
        """The events the active ``log`` handlers print: the screen does not print them a second time."""
        self._logged = {name for handler in handlers if handler.use == LOG for name, _ in handler.subscriptions}

    def __call__(self, event: Event) -> None:
        if self._logged.isdisjoint(subscriptions_hearing(event.name)):
            self.console.print(_event_text(event), soft_wrap=True)
        if event.name == POLL_FAILED and self._with_stderr:
            _READ_ON_TERMINAL.add(event.detail)

    def note(self, text: str) -> None:
        """A line about the watcher itself (not an event), above the status line."""
        self.console.print(text, style="dim", markup=False)

    def status(self, status: WatchStatus) -> None:
        if self._live is not None:
            self._live.update(_status_text(status), refresh=True)

    @contextlib.contextmanager
    def showing(self) -> Iterator[_Screen]:
        """While inside: the live status line is drawn, and log lines print above it (never into it)."""
        if self._live is None:
            yield self
            return
        with self._live, logs_through(self.console):
            yield self


# --- watch ---------------------------------------------------------------------------------------------------


def _stop_on_signals(stop: asyncio.Event, interrupted: list[int]) -> None:
    """Ctrl-C or SIGTERM ends the loop after the current cycle (and records which signal came)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):

        def on_signal(signum: int = signum) -> None:
            interrupted.append(signum)
            stop.set()

        loop.add_signal_handler(signum, on_signal)


async def _watch(runtime: Runtime, screen: _Screen, *, once: bool, interrupted: list[int]) -> None:
    """Run `runtime` until a signal, or for one cycle (`once`).

    `once` fails (exit 1) when its poll failed. The loop keeps watching through every error but one: a key
    rejected before any poll succeeded, since the key is read once at start and retrying cannot fix it.
    """
    watcher = runtime.watcher
    stop = asyncio.Event()
    _stop_on_signals(stop, interrupted)
    if once:
        await runtime.poll_once(all_periodic=True)
        if watcher.last_error is not None:
            _fail_poll(watcher.last_error)
        return

    def on_cycle() -> None:
        screen.status(watcher.status)
        if _key_rejected_at_start(watcher) is not None:
            stop.set()

    with screen.showing():
        if runtime.leadership is None:
            await runtime.run(stop, on_cycle=on_cycle)
        else:
            async with asyncio.TaskGroup() as group:
                group.create_task(_tell_the_role(runtime, screen, stop))
                await runtime.run(stop, on_cycle=on_cycle)
    if (rejected := _key_rejected_at_start(watcher)) is not None:
        _fail_poll(rejected)


async def _tell_the_role(runtime: Runtime, screen: _Screen, stop: asyncio.Event) -> None:
    """In a team: say when this watcher stands by (and who leads instead), and when it takes over."""
    assert runtime.leadership is not None
    me, failover = runtime.leadership.member, runtime.config.team.failover
    told = None
    while not stop.is_set():
        members = runtime.store.repository(TeamMembers).members()
        role = next((m.role for m in members if m.member == me), None)  # on the roster once it first tried
        leaders = sorted((m for m in members if m.role == "leader" and m.member != me), key=lambda m: m.seen)
        if role == "leader" and told != role:
            told = role
            screen.note("this watcher leads: it polls and acts")
        elif role == "follower" and told != role and leaders:  # the leader records itself as it takes the lock
            told = role
            who = leaders[-1].member
            screen.note(f"standing by: {who} leads; this watcher takes over within {failover:g} s if it stops")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), ROLE_CHECK_SECONDS)


def _key_rejected_at_start(watcher: Watcher) -> AuthError | None:
    error = watcher.last_error
    return error if watcher.status.polls == 0 and isinstance(error, AuthError) else None


def _fail_poll(error: Exception) -> NoReturn:
    """Exit 1 with one line saying what failed (a rejected key's message already says what to do).

    A person at a terminal has just read the reason on the ``poll_failed`` line: it is not printed again.
    Piped or redirected output keeps the ``error:`` line on stderr for scripts and logs.
    """
    if redact(str(error) or type(error).__name__) in _READ_ON_TERMINAL:
        raise typer.Exit(EXIT_FAILED)
    if isinstance(error, AuthError):
        fail(str(error))
    fail(f"the poll failed, nothing was diffed: {str(error) or type(error).__name__}")


@app.command()
def watch(
    config: ConfigOption = None,
    interval: Annotated[
        float | None,
        typer.Option(
            "--interval", min=0.05, metavar="SECONDS", help="Seconds between polls (default: [watch] interval)."
        ),
    ] = None,
    once: Annotated[
        bool,
        typer.Option("--once", help="Run one poll cycle (and pending deliveries), then exit; 1 if the poll failed."),
    ] = False,
    jsonl: JsonlOption = None,
    sim: Annotated[
        bool, typer.Option("--sim", help="Watch an in-process simulator playing a scenario; no account needed.")
    ] = False,
    scenario: Annotated[
        Path | None, typer.Option("--scenario", help="Scenario file for --sim (default: the built-in demo).")
    ] = None,
    metrics_listen: Annotated[
        str | None,
        typer.Option(
            "--metrics-listen", metavar="HOST:PORT", help="Serve Prometheus metrics at http://HOST:PORT/metrics."
        ),
    ] = None,
    pace: Annotated[
        float,
        typer.Option(
            "--pace", min=0.0, help="With --sim: real seconds between simulated polls (0: as fast as possible)."
        ),
    ] = SIM_POLL_SECONDS,
    webhook_listen: Annotated[
        str | None,
        typer.Option(
            "--webhook-listen",
            metavar="HOST:PORT",
            help="Serve Vast's signed webhooks here; each one makes the watcher poll now (default: [webhooks] listen).",
        ),
    ] = None,
) -> None:
    """Poll the account and turn every change into events for the handlers named in the config."""
    metrics_at = _listen(metrics_listen) if metrics_listen is not None else None
    if sim or scenario is not None:
        if once or interval is not None:
            fail("--sim plays its whole scenario at its own pace; it takes no --once or --interval", 2)
        _watch_sim(config, scenario, jsonl, pace, metrics_at)
        return
    cfg = _load(config)
    sink = _jsonl_sink(jsonl)
    console = Console(stderr=jsonl == "-", highlight=False)
    screen = _Screen(console, live=console.is_terminal and not once)
    every = interval if interval is not None else cfg.watch.interval
    metrics = _metrics(metrics_at)
    interrupted: list[int] = []
    polls = 0
    server: WSGIServer | None = None

    async def main() -> None:
        nonlocal polls, server
        try:  # the client, store and handlers cfg describes: no key, a handler's config or the store is a setup error
            runtime = Runtime(
                cfg, interval=every, observers=_observers(screen, sink), metrics=metrics, webhook_listen=webhook_listen
            )
        except (ConfigError, StoreError) as exc:
            fail(str(exc), 2)
        try:
            screen.leave_to_the_log(runtime.handlers)
            if sink is not None:
                sink.catch_up(runtime.store)
            if not once:
                console.print(
                    f"watching {redact(cfg.vast.url)} every {every:g}s · store {cfg.store.describe()} · "
                    f"handlers: {', '.join(handler.name for handler in runtime.handlers) or 'none'}",
                    style="dim",
                )
            if metrics is not None and metrics_at is not None:
                server = _serve_metrics(metrics, metrics_at, console)
        except BaseException:
            await runtime.aclose()
            raise
        async with runtime:
            try:
                await _watch(runtime, screen, once=once, interrupted=interrupted)
            finally:
                polls = runtime.watcher.status.polls

    try:
        asyncio.run(main())
    except ConfigError as exc:
        fail(str(exc), 2)
    except VastEventsError as exc:
        fail(str(exc))
    finally:
        if sink is not None:
            sink.close()
        if server is not None:
            server.shutdown()
    if interrupted:
        console.print(f"stopped after {polls} poll{'' if polls == 1 else 's'}", style="dim")
        raise typer.Exit(EXIT_INTERRUPTED)


def _jsonl_sink(jsonl: str | None) -> JsonlSink | None:
    try:
        return JsonlSink(jsonl) if jsonl else None
    except OSError as exc:
        fail(f"cannot write --jsonl {jsonl}: {exc.strerror or exc}", 2)


def _listen(listen: str) -> tuple[str, int]:
    """``--metrics-listen HOST:PORT``, or exit 2 saying what it wants."""
    try:
        return parse_listen(listen, "--metrics-listen", 9108)
    except ConfigError as exc:
        fail(str(exc), 2)


def _metrics(at: tuple[str, int] | None) -> Metrics | None:
    """The metrics to serve with ``--metrics-listen`` (prometheus-client is imported only then), else None."""
    if at is None:
        return None
    from vastevents.metrics import Metrics

    return Metrics()


def _serve_metrics(metrics: Metrics, at: tuple[str, int], console: Console) -> WSGIServer:
    host, port = at
    try:
        server, _thread = metrics.serve(host, port)
    except OSError as exc:
        fail(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}", 2)
    console.print(f"metrics at http://{host}:{server.server_port}/metrics", style="dim")
    return server


def _observers(screen: _Screen, sink: JsonlSink | None) -> list[EventObserver]:
    return [screen, sink] if sink is not None else [screen]


def _handlers(cfg: Config) -> list[ActiveHandler]:
    try:
        return load_handlers(cfg)
    except ConfigError as exc:
        fail(str(exc), 2)


# --- watch --sim ---------------------------------------------------------------------------------------------


def _watch_sim(
    config_path: Path | None,
    scenario: Path | None,
    jsonl: str | None,
    pace: float,
    metrics_at: tuple[str, int] | None,
) -> None:
    """The embedded default: a temporary store, an in-process simulator on a manual clock stepped poll by poll.

    Simulated time moves only between polls — to the simulator's next change or one grid step, whichever is
    first — so the same scenario gives the same events on any machine however loaded; `pace` only spaces the
    steps out in real time for the reader. The config is found like every command's (its handlers and
    thresholds apply; its store and API are replaced by the temporary store and the simulator).
    """
    from vastevents.sim import Simulator  # only --sim needs the simulator

    path = scenario or Simulator.builtin_scenario("demo")
    cfg = _load(config_path)
    handlers = _handlers(cfg)
    clock = ManualClock()
    api_key = f"sim-{secrets.token_hex(8)}"
    try:
        simulator = Simulator(api_key=api_key, clock=clock, scenario=path, ssh=False)
    except (VastEventsError, OSError) as exc:
        fail(f"cannot load scenario {path}: {exc}", 2)
    start, end = clock.now(), simulator.scenario_end or clock.now()
    duration = (end - start).total_seconds()
    step = max(1.0, duration / SIM_STEPS)
    console = Console(stderr=jsonl == "-", highlight=False)
    screen = _Screen(console, live=console.is_terminal)
    screen.leave_to_the_log(handlers)
    title = "the built-in demo scenario" if scenario is None else f"scenario {path}"
    metrics = _metrics(metrics_at)
    interrupted: list[int] = []
    sink = _jsonl_sink(jsonl)
    with tempfile.TemporaryDirectory(prefix="vastevents-sim-") as tmp:
        try:
            simulator.start()
            simulated = with_sections(
                cfg,
                vast=cfg.vast.model_copy(update={"url": simulator.url}),
                store=StoreConfig(path=Path(tmp) / "state.db"),
            )
            console.rule(f"vastevents watch --sim: {title}")
            if simulator.description:
                console.print(simulator.description, style="dim")
            console.print(
                f"simulator {simulator.url} · {duration / 60:.0f} simulated minutes · a poll every {step:.0f}"
                " simulated s · temporary store",
                style="dim",
            )
            where = f"from {cfg.source}" if cfg.source else "no config file"
            console.print(f"handlers ({where}): {', '.join(h.name for h in handlers) or 'none'}", style="dim")
            server = None
            if metrics is not None and metrics_at is not None:
                server = _serve_metrics(metrics, metrics_at, console)
            started = time.monotonic()

            async def main() -> tuple[WatchStatus, list[Event]]:
                stop = asyncio.Event()
                _stop_on_signals(stop, interrupted)
                runtime = Runtime(
                    simulated, api_key=api_key, clock=clock, handlers=handlers, interval=step,
                    observers=_observers(screen, sink), metrics=metrics,
                )  # fmt: skip
                if sink is not None:
                    sink.catch_up(runtime.store)
                async with runtime:
                    with screen.showing():
                        while not stop.is_set():
                            await runtime.poll_once()
                            screen.status(runtime.watcher.status)
                            if clock.now() >= end:
                                break
                            # The next moment the simulator changes something, or one grid step (the watcher's
                            # own timers: grace periods, stuck loads), whichever comes first.
                            due = simulator.next_due()
                            grid = clock.now() + timedelta(seconds=step)
                            clock.set(min(grid, due, end) if due is not None else min(grid, end))
                            if pace:
                                with contextlib.suppress(TimeoutError):
                                    await asyncio.wait_for(stop.wait(), pace)
                    return runtime.watcher.status, runtime.store.events()

            try:
                status, journal = asyncio.run(main())
            finally:
                if server is not None:
                    server.shutdown()
        finally:
            simulator.stop()
            if sink is not None:
                sink.close()
    _summary(console, journal, status, time.monotonic() - started, simulator.ssh_pids())
    if interrupted:
        console.print(f"the story was interrupted: stopped after {status.polls} polls", style="dim")
        raise typer.Exit(EXIT_INTERRUPTED)


def _summary(console: Console, journal: list[Event], status: WatchStatus, seconds: float, sshd: list[int]) -> None:
    counts = Counter(event.name for event in journal)
    console.rule("summary")
    table = Table(show_header=True, header_style="bold", box=None)
    table.add_column("event")
    table.add_column("count", justify="right")
    for name, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        table.add_row(escape(name), str(count))
    console.print(table)
    instances = len({event.instance_id for event in journal if event.instance_id is not None})
    console.print(
        f"{plural(len(journal), 'event')} about {plural(instances, 'instance')} in {plural(status.polls, 'poll')},"
        f" {seconds:.1f} s; "
        f"simulator stopped{', no sshd left' if not sshd else ''}. "
        "Next: `vastevents sim` + `VAST_URL` to try handlers, or `vastevents watch` on your account.",
        style="dim",
    )


# --- events and handlers -------------------------------------------------------------------------------------


FOLLOW_SECONDS = 1.0
"""How often ``events --follow`` looks for new events in the journal."""


@app.command()
def events(
    config: ConfigOption = None,
    since: Annotated[int | None, typer.Option("--since", help="Only events with an id greater than this.")] = None,
    instance: Annotated[int | None, typer.Option("--instance", help="Only events of this instance id.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Only events of this name.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, help="Only the last N matching events.")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events as they are journaled, until Ctrl-C.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON array of every matching event.")] = False,
) -> None:
    """Show the event journal (every event, oldest first)."""
    if follow and as_json:
        fail("--follow prints events as they come; it takes no --json (use `watch --jsonl -` for a stream)", 2)
    if follow:
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops it like Ctrl-C
    cfg = _load(config)
    path = cfg.store.describe()
    found = _journal(cfg, since=since, instance=instance, name=name)
    if name is not None and not is_known_event_name(name) and not found and not _journaled_name(cfg, name):
        fail(f"unknown event name {name!r}: vastevents never emits it and the journal has none (a typo?)", 2)
    if limit is not None:
        found = found[-limit:]
    if as_json:
        typer.echo(json.dumps([event.to_json() for event in found], indent=2))
        return
    console = Console(highlight=False)
    if not found and not follow:
        there = cfg.store.resolved_url() is not None or cfg.store.resolved_path().exists()
        console.print(f"no events{'' if there else f' (no journal at {path} yet)'}")
        return
    for event in found:
        console.print(_event_text(event), soft_wrap=True)
    if follow:
        _follow(console, cfg, since=found[-1].id if found else since, instance=instance, name=name)


def _journal(cfg: Config, *, since: int | None, instance: int | None, name: str | None) -> list[Event]:
    """The matching events of the configured journal (none if there is no journal yet: it is not created)."""
    store = existing_store(cfg)
    if store is None:
        return []
    with store:
        return store.events(since=since, instance_id=instance, name=name)


def _journaled_name(cfg: Config, name: str) -> bool:
    """True if the journal holds an event called `name` (handler-made names count once they are journaled)."""
    return bool(_journal(cfg, since=None, instance=None, name=name))


def _follow(console: Console, cfg: Config, *, since: int | None, instance: int | None, name: str | None) -> NoReturn:
    """Print each new matching event as the journal gets it; Ctrl-C or SIGTERM ends it with status 130."""
    last = since
    try:
        while True:
            for event in _journal(cfg, since=last, instance=instance, name=name):
                console.print(_event_text(event), soft_wrap=True)
                last = event.id
            time.sleep(FOLLOW_SECONDS)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None


@app.command()
def handlers(config: ConfigOption = None) -> None:
    """List installed handlers (entry points) and the active ones (named in the config), with their origin."""
    cfg = _load(config)
    active = _handlers(cfg)
    console = Console(highlight=False)
    used = {handler.use for handler in active}
    installed = Table(title="installed (entry-point group vastevents.handlers)", title_justify="left", box=None)
    for column in ("name", "object", "distribution", "active"):
        installed.add_column(column, header_style="bold")
    for item in installed_handlers():
        installed.add_row(item.name, item.value, item.distribution, "yes" if item.name in used else "no")
    console.print(installed)
    where = str(cfg.source) if cfg.source else "no config file: defaults"
    table = Table(title=f"active (from {where})", title_justify="left", box=None)
    for column in ("name", "use", "source", "events"):
        table.add_column(column, header_style="bold")
    for handler in active:
        events_ = ", ".join(sorted({event for event, _ in handler.subscriptions}))
        table.add_row(handler.name, handler.use, handler.source, events_)
    console.print(table)
    if not active:
        console.print(
            escape('no active handlers: to log every event, add a table [handlers.log] with the line use = "log"'),
            style="dim",
        )
