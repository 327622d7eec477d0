"""The handler API and plugin loading.

A handler is a function or a method marked with :func:`on`; a configurable handler is a :class:`Handler`
subclass whose ``Options`` pydantic model validates its ``[handlers.NAME]`` keys. Handlers are found through
the ``vastevents.handlers`` entry-point group (``use = "log"``) or imported (``use = "package.module:attr"``).
Installed is not active: only handlers named in the config run.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

from pydantic import BaseModel, ConfigDict, ValidationError

from vastevents.config import Config, config_error, options_error, parse_duration
from vastevents.events import Event, is_known_event_name

if TYPE_CHECKING:
    from vastevents.context import Context

ENTRY_POINT_GROUP = "vastevents.handlers"

log = logging.getLogger(__name__)

HandlerFunc = Callable[[Event, "Context"], Awaitable[None] | None]
"""What a subscription calls: ``async def f(event, ctx)``, or a plain ``def`` (run in a worker thread)."""
PeriodicFunc = Callable[["Context"], Awaitable[None] | None]
"""What ``@every`` calls: ``async def tick(ctx)``."""
DaemonFunc = Callable[[int, dict[str, Any], "Context"], Awaitable[None]]
"""A daemon: ``async def watch_job(instance_id, state, ctx)``, running until it returns or is cancelled."""

F = TypeVar("F", bound=Callable[..., Any])
_SUBSCRIPTIONS = "__vastevents_events__"
_PERIOD = "__vastevents_every__"
_DAEMON = "__vastevents_daemon__"


def on(*names: str) -> Callable[[F], F]:
    """Subscribe the decorated function or method to events: ``@on("loading_to_running")``, ``@on("*")``.

    Returns the function unchanged (only marked), so it stays callable and testable on its own.
    """
    if not names:
        raise TypeError('on() needs at least one event name, e.g. @on("loading_to_running")')

    def mark(func: F) -> F:
        setattr(func, _SUBSCRIPTIONS, (*getattr(func, _SUBSCRIPTIONS, ()), *names))
        return func

    return mark


def subscribed_events(func: object) -> tuple[str, ...]:
    """The event names `func` was marked with by :func:`on` (empty if none)."""
    names = getattr(func, _SUBSCRIPTIONS, ())
    return tuple(names) if isinstance(names, tuple) else ()


EACH_POLL = "poll"
"""``@every("poll")``: after every poll cycle."""


def every(period: str | float, *, at_start: bool = False) -> Callable[[F], F]:
    """Make the decorated ``async def f(ctx)`` (function or method) a periodic handler: ``@every("5m")``.

    The runtime runs it when it is due (its last run is kept in the store, so a restart does not reset it);
    ``@every("poll")`` runs it after every poll cycle; `at_start` also runs it as soon as this watcher takes charge
    (it starts, or becomes its team's leader). ``watch --once`` runs every periodic handler once.
    """
    seconds = None if period == EACH_POLL else parse_duration(period)
    if seconds is not None and seconds <= 0:
        raise ValueError('every() needs a positive period, or "poll"')

    def mark(func: F) -> F:
        setattr(func, _PERIOD, (seconds, at_start))
        return func

    return mark


def daemon(func: F) -> F:
    """Mark ``async def f(self, instance_id, state, ctx)`` as a per-instance daemon of a :class:`Handler`.

    Start one with ``await ctx.spawn(self.f, instance, state)``; it runs until it returns, is cancelled when its
    instance vanishes or is destroyed, and is restarted from its last ``ctx.checkpoint(state)`` after a restart.
    """
    setattr(func, _DAEMON, True)
    return func


class HandlerOptions(BaseModel):
    """Base of a handler's options model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


OptionsT = TypeVar("OptionsT", bound=HandlerOptions)


class Handler(Generic[OptionsT]):
    """Base of configurable handlers: set ``Options`` to a :class:`HandlerOptions` model, mark methods with @on.

    Override :meth:`subscriptions` when the events depend on the options.
    """

    Options: ClassVar[type[HandlerOptions]] = HandlerOptions
    emits: ClassVar[tuple[str, ...]] = ()
    """The names of the events this handler journals with ``ctx.emit`` (emitting another name is an error)."""

    def __init__(self, options: OptionsT | None = None) -> None:
        self.options: OptionsT = options if options is not None else cast(OptionsT, type(self).Options())

    def subscriptions(self) -> list[tuple[str, HandlerFunc]]:
        """(event name, callable) pairs: by default every method marked with :func:`on`."""
        return _marked_methods(self)


def _marked_methods(obj: object) -> list[tuple[str, HandlerFunc]]:
    found: list[tuple[str, HandlerFunc]] = []
    for attr in sorted(dir(type(obj))):
        if attr.startswith("__"):
            continue
        member = getattr(obj, attr, None)
        for name in subscribed_events(member):
            found.append((name, cast(HandlerFunc, member)))
    return found


@dataclass(frozen=True)
class InstalledHandler:
    """A handler an installed distribution offers through the entry-point group."""

    name: str
    value: str
    distribution: str


@dataclass(frozen=True)
class Every:
    """One periodic handler of an active handler (its method or function marked with :func:`every`)."""

    name: str
    func: PeriodicFunc
    period: float | None
    """Seconds between runs; None: after every poll cycle."""
    at_start: bool = False


@dataclass(frozen=True)
class ActiveHandler:
    """A handler the config named, ready to subscribe: ``source`` says where it came from."""

    name: str
    use: str
    source: str
    subscriptions: tuple[tuple[str, HandlerFunc], ...]
    target: object
    emits: tuple[str, ...] = ()
    periodic: tuple[Every, ...] = ()
    daemons: tuple[tuple[str, DaemonFunc], ...] = ()

    def daemon(self, name: str) -> DaemonFunc | None:
        return next((func for daemon_name, func in self.daemons if daemon_name == name), None)


def _entry_points() -> dict[str, EntryPoint]:
    return {point.name: point for point in entry_points(group=ENTRY_POINT_GROUP)}


def _distribution(point: EntryPoint) -> str | None:
    """``"name version"`` of the distribution that installed `point`, if known."""
    return f"{point.dist.name} {point.dist.version}" if point.dist is not None else None


def installed_handlers() -> list[InstalledHandler]:
    """Every handler installed through the ``vastevents.handlers`` entry points, by name."""
    found = []
    for name, point in sorted(_entry_points().items()):
        found.append(InstalledHandler(name, point.value, _distribution(point) or "unknown distribution"))
    return found


def resolve(
    use: str, near: Path | None = None, *, points: Mapping[str, EntryPoint] | None = None
) -> tuple[object, str]:
    """The object `use` names and a description of where it came from.

    `use` is an installed handler's name (``"log"``) or ``"package.module:attr"``. A module that is not importable
    is also looked for in the directory `near` (the config file's): a plugin written next to its config is found
    however vastevents was started (the ``vastevents`` script does not put the current directory on the path).
    `points` are the installed entry points, when the caller has already listed them (listing scans every
    installed distribution).
    """
    if points is None:
        points = _entry_points()
    if use in points:
        point = points[use]
        dist = _distribution(point)
        return point.load(), f"entry point {use!r} = {point.value}{f' ({dist})' if dist else ''}"
    module_name, colon, attr = use.partition(":")
    if not colon or not module_name or not attr:
        installed = ", ".join(sorted(points)) or "none"
        raise LookupError(f"expected an installed handler name ({installed}) or 'package.module:attr'")
    try:
        target: object = _import(module_name, near)
    except ImportError as exc:
        raise LookupError(f"cannot import {module_name}: {exc}") from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise LookupError(f"{module_name} has no attribute {attr!r}") from None
    return target, f"import {use}"


def _import(module_name: str, near: Path | None) -> object:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = module_name.partition(".")[0]
        found = near is not None and ((near / f"{top}.py").is_file() or (near / top / "__init__.py").is_file())
        if exc.name != top or not found or str(near) in sys.path:
            raise
        sys.path.insert(0, str(near))
        return importlib.import_module(module_name)


def activate(
    name: str, target: object, options: Mapping[str, Any] | None = None, *, use: str = "", source: str = ""
) -> ActiveHandler:
    """Make `target` (an @on function, a Handler class or instance) an active handler called `name`.

    `options` are validated by the handler's ``Options`` model; raises ValueError or ValidationError.
    """
    options = dict(options or {})
    if isinstance(target, type):
        model = getattr(target, "Options", None)
        if isinstance(model, type) and issubclass(model, BaseModel):
            target = target(model.model_validate(options))
        elif options:
            raise ValueError(f"takes no options, got {', '.join(sorted(options))}")
        else:
            target = target()
    elif options:
        raise ValueError(f"takes no options, got {', '.join(sorted(options))}")
    if callable(target) and not isinstance(target, Handler) and subscribed_events(target):
        subscriptions = [(event, cast(HandlerFunc, target)) for event in subscribed_events(target)]
    elif isinstance(target, Handler):
        subscriptions = target.subscriptions()
    else:
        subscriptions = _marked_methods(target)
    periodic = _periodic(target)
    if not subscriptions and not periodic:
        raise ValueError("subscribes to no events (mark a function or method with @on(...) or @every(...))")
    emits = tuple(getattr(target, "emits", ()) or ())
    daemons = tuple(
        (attr, cast(DaemonFunc, getattr(target, attr)))
        for attr in sorted(dir(type(target)))
        if not attr.startswith("__") and getattr(getattr(target, attr, None), _DAEMON, False)
    )
    return ActiveHandler(
        name, use or name, source or "python object", tuple(subscriptions), target, emits, periodic, daemons
    )


def _periodic(target: object) -> tuple[Every, ...]:
    if callable(target) and hasattr(target, _PERIOD):
        return (_every(getattr(target, "__name__", "every"), target),)
    found = []
    for attr in sorted(dir(type(target))):
        member = getattr(target, attr, None) if not attr.startswith("__") else None
        if member is not None and hasattr(member, _PERIOD):
            found.append(_every(attr, member))
    return tuple(found)


def _every(name: str, func: object) -> Every:
    period, at_start = getattr(func, _PERIOD)
    return Every(name, cast(PeriodicFunc, func), period, at_start)


def unknown_subscriptions(handlers: Sequence[ActiveHandler]) -> list[tuple[str, str]]:
    """(handler, event name) pairs subscribing to a name nothing emits: not vastevents, not an active handler,
    not an installed one (a Slack handler may listen for ``reaped`` while the reaper is not configured)."""
    declared = {name for handler in handlers for name in handler.emits}
    unknown = [
        (handler.name, event)
        for handler in handlers
        for event, _ in handler.subscriptions
        if not is_known_event_name(event) and event not in declared
    ]
    if unknown:
        declared |= _installed_emits()
    return [(handler, event) for handler, event in unknown if event not in declared]


def _installed_emits() -> set[str]:
    """Every event name an installed handler declares (loading them; only asked when a name is unknown)."""
    names: set[str] = set()
    for point in _entry_points().values():
        try:
            names.update(getattr(point.load(), "emits", ()) or ())
        except Exception as exc:  # a broken plugin must not break another's check
            log.debug("cannot load handler %s: %s", point.name, exc)
    return names


def load_handlers(config: Config) -> list[ActiveHandler]:
    """The handlers `config` names, resolved, configured and validated; errors name the key and line."""
    active = []
    points = _entry_points() if config.handlers else {}  # listed once for all the handlers
    for name, handler_config in config.handlers.items():
        use = handler_config.use
        try:
            target, source = resolve(use, near=config.source.parent if config.source else None, points=points)
        except LookupError as exc:
            raise config_error(config, ("handlers", name, "use"), f"{use!r}: {exc}") from None
        try:
            active.append(activate(name, target, handler_config.options(), use=use, source=source))
        except ValidationError as exc:
            raise options_error(config, ("handlers", name), exc) from None
        except ValueError as exc:
            raise config_error(config, ("handlers", name), f"handler {use!r} {exc}") from None
    for handler, event in unknown_subscriptions(active):
        log.warning("handler %s subscribes to %r, which nothing emits (a typo?)", handler, event)
    return active
