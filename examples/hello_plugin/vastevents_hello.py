"""An example vastevents plugin: say hello when an owned instance is up, and warn when one is preempted.

Install it (``pip install ./examples/hello_plugin``), then activate it in the config:

    [handlers.hello]
    use = "hello"
    greeting = "is ready"
"""

from __future__ import annotations

from vastevents import Context, Event, Handler, HandlerOptions, on


class HelloOptions(HandlerOptions):
    greeting: str = "is up"
    only_owned: bool = True


class Hello(Handler[HelloOptions]):
    """Notifies when an instance reaches ``running`` and when one is preempted."""

    Options = HelloOptions

    @on("loading_to_running")
    async def up(self, event: Event, ctx: Context) -> None:
        instance = event.instance
        if instance is None or (self.options.only_owned and not ctx.owns(instance)):
            return
        gpu = f" on {instance.gpu_name}" if instance.gpu_name else ""
        await ctx.notify(f"{instance.label or instance.id} {self.options.greeting}{gpu}", event=event)

    @on("preempted")
    async def preempted(self, event: Event, ctx: Context) -> None:
        await ctx.notify(f"instance {event.instance_id} was preempted: {event.detail}", event=event)
