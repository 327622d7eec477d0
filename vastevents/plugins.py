"""The handler API and plugin loading.

A handler is a function or a method marked with :func:`on`; a configurable handler is a :class:`Handler`
subclass whose ``Options`` pydantic model validates its ``[handlers.NAME]`` keys. Handlers are found through
the ``vastevents.handlers`` entry-point group (``use = "log"``) or imported (``use = "package.module:attr"``).
Installed is not active: only handlers named in the config run.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar, cast

from pydantic import BaseModel, ConfigDict, ValidationError

from vastevents.clock import Clock
from vastevents.config import Config, config_error, options_error
from vastevents.events import Event, is_known_event_name
from vastevents.models import Instance

if TYPE_CHECKING:
    from vastevents.store import Store
    from vastevents.vast import VastClient

ENTRY_POINT_GROUP = "vastevents.handlers"

log = logging.getLogger(__name__)

HandlerFunc = Callable[[Event, "Context"], Awaitable[None] | None]
"""What a subscription calls: ``async def f(event, ctx)`` (a plain function works too, but blocks the loop)."""

F = TypeVar("F", bound=Callable[..., Any])
_SUBSCRIPTIONS = "__vastevents_events__"


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


class Notifier(Protocol):
    """Where handlers send human messages (Slack, a log, a test recorder)."""

    async def notify(self, text: str, *, event: Event | None = None) -> None: ...


class LoggingNotifier:
    """The default notifier: messages go to the ``vastevents.notify`` logger."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("vastevents.notify")

    async def notify(self, text: str, *, event: Event | None = None) -> None:
        self.logger.info("%s%s", f"[#{event.id} {event.name}] " if event is not None else "", text)


@dataclass(frozen=True, kw_only=True)
class Context:
    """What handlers get besides the event: the client, the store, SSH, the notifier, the clock, a logger.

    All injectable, so tests pass fakes (see :mod:`vastevents.testing`).
    """

    client: VastClient
    store: Store
    clock: Clock
    config: Config = field(default_factory=Config)
    notifier: Notifier = field(default_factory=LoggingNotifier)
    ssh: object | None = None
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("vastevents.handlers"))

    async def notify(self, text: str, *, event: Event | None = None) -> None:
        await self.notifier.notify(text, event=event)

    def owns(self, instance: Instance | None) -> bool:
        """True if handlers may act on `instance`: its label starts with ``[vast] label_prefix``."""
        prefix = self.config.vast.label_prefix
        return bool(instance is not None and prefix and instance.label and instance.label.startswith(prefix))

    def for_handler(self, name: str) -> Context:
        """This context with a logger named after the handler."""
        return replace(self, logger=logging.getLogger(f"vastevents.handlers.{name}"))


class HandlerOptions(BaseModel):
    """Base of a handler's options model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


OptionsT = TypeVar("OptionsT", bound=HandlerOptions)


class Handler(Generic[OptionsT]):
    """Base of configurable handlers: set ``Options`` to a :class:`HandlerOptions` model, mark methods with @on.

    Override :meth:`subscriptions` when the events depend on the options.
    """

    Options: ClassVar[type[HandlerOptions]] = HandlerOptions

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
class ActiveHandler:
    """A handler the config named, ready to subscribe: ``source`` says where it came from."""

    name: str
    use: str
    source: str
    subscriptions: tuple[tuple[str, HandlerFunc], ...]
    target: object


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


def resolve(use: str) -> tuple[object, str]:
    """The object `use` names and a description of where it came from.

    `use` is an installed handler's name (``"log"``) or ``"package.module:attr"``.
    """
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
        target: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise LookupError(f"cannot import {module_name}: {exc}") from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise LookupError(f"{module_name} has no attribute {attr!r}") from None
    return target, f"import {use}"


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
    if not subscriptions:
        raise ValueError("subscribes to no events (mark a function or method with @on(...))")
    for event, _ in subscriptions:
        if not is_known_event_name(event):
            log.warning("handler %s subscribes to %r, which vastevents never emits (a typo?)", name, event)
    return ActiveHandler(name, use or name, source or "python object", tuple(subscriptions), target)


def load_handlers(config: Config) -> list[ActiveHandler]:
    """The handlers `config` names, resolved, configured and validated; errors name the key and line."""
    active = []
    for name, handler_config in config.handlers.items():
        use = handler_config.use
        try:
            target, source = resolve(use)
        except LookupError as exc:
            raise config_error(config, ("handlers", name, "use"), f"{use!r}: {exc}") from None
        try:
            active.append(activate(name, target, handler_config.options(), use=use, source=source))
        except ValidationError as exc:
            raise options_error(config, ("handlers", name), exc) from None
        except ValueError as exc:
            raise config_error(config, ("handlers", name), f"handler {use!r} {exc}") from None
    return active
