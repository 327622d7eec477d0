"""What ``run`` looks at on the account before it rents, as the runbook does by hand: what is already rented under
our labels (every owned instance bills, running or stopped), each with the job that uses it. Instances no
unfinished job uses are "left over": ``run`` asks whether to keep, stop or destroy them (``--yes``: it says so and
keeps them). The account's volumes are counted, as they bill too.
"""

from __future__ import annotations

from typing import Literal

import typer
from rich.console import Console
from rich.markup import escape

from vastevents.errors import VastEventsError
from vastevents.models import Instance
from vastevents.runtime import Runtime
from vastevents.store import Jobs

Choice = Literal["keep", "stop", "destroy"]
CHOICES: tuple[Choice, ...] = ("keep", "stop", "destroy")
HANDLER = "run"
"""The name ``run``'s own actions are recorded under (intents)."""


def _ask(question: str) -> Choice:
    """keep, stop or destroy, asked until the answer is one of them."""
    while True:
        answer = str(typer.prompt(question, default="keep", err=True)).strip().lower()
        for choice in CHOICES:
            if answer in (choice, choice[0]):
                return choice
        typer.echo("answer keep, stop or destroy", err=True)


def _line(instance: Instance, jobs: Jobs) -> str:
    job = jobs.by_label(instance.label)
    use = f"job {job.id} ({job.status})" if job is not None and not job.done else "left over: no running job uses it"
    state = instance.actual_status or instance.state.value
    price = f"${instance.dph_total:.4f}/h" if instance.dph_total is not None else "$?/h"
    return f"  {instance.id}  {escape(instance.label or '')}  {state}  {price}  {use}"


async def account_preflight(runtime: Runtime, *, yes: bool, dry_run: bool, err: Console) -> None:
    """Say what the account already rents under our labels; ask what to do with what no job uses."""
    jobs = runtime.store.repository(Jobs)
    instances = sorted(await runtime.client.list_instances(), key=lambda instance: instance.id)
    owned = [instance for instance in instances if runtime.actions.owns(instance)]
    others = [i for i in instances if not runtime.actions.owns(i) and i.actual_status == "running"]
    prefix = runtime.config.vast.label_prefix
    if owned:
        err.print(f"{len(owned)} instance(s) under {prefix!r} labels already on the account:")
        for instance in owned:
            err.print(_line(instance, jobs), highlight=False)
    if others:
        err.print(f"[yellow]note:[/] {len(others)} other instance(s) running on the account (not labelled {prefix!r})")
    try:
        volumes = await runtime.client.list_volumes()
    except VastEventsError as exc:
        err.print(f"[yellow]note:[/] cannot list the account's volumes: {escape(str(exc))}")
        volumes = []
    if volumes:
        rate = sum(volume.dph_total or 0.0 for volume in volumes)
        err.print(f"{len(volumes)} volume(s) on the account bill ${rate:.4f}/h (`vastevents volumes` lists them)")
    left_over = [i for i in owned if (job := jobs.by_label(i.label)) is None or job.done]
    if not left_over or dry_run:
        return
    if yes:
        err.print(f"--yes: leaving the {len(left_over)} left-over instance(s) as they are")
        return
    choice = _ask(f"{len(left_over)} of them no running job uses: keep, stop or destroy them?")
    context = runtime.context.bound(HANDLER, ())
    for instance in left_over:
        if choice == "destroy":
            await context.destroy(instance)
        elif choice == "stop" and instance.actual_status == "running":
            await context.stop(instance)
    if choice != "keep":
        err.print(f"{'destroyed' if choice == 'destroy' else 'stopped'} {len(left_over)} left-over instance(s)")
