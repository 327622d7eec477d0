"""What ``run`` shows while its job goes: where it is, what the host says, how long and how much so far.

On a terminal one live status line (rich) on the console, log lines and the job's own output printed above it;
anywhere else (a pipe, a file, CI) a plain line each time the job moves on, and one per finished transfer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from rich.console import Console
from rich.status import Status

from vastevents.cli._app import logs_through
from vastevents.cli._format import format_duration, money
from vastevents.runtime import Runtime
from vastevents.ssh import Transfer
from vastevents.store import Job, Jobs

REFRESH_SECONDS = 0.5
"""How often the status line is redrawn (and a plain line considered)."""


def size(count: int) -> str:
    """Bytes as a person reads them: ``812 B``, ``12.3 kB``, ``4.5 MB``, ``1.2 GB``."""
    amount = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if amount < 1000 or unit == "GB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Moment:
    """Where the job is: its status, its runner's phase, what the host says, and any transfer under way."""

    status: str
    phase: str | None
    host_says: str | None
    transfer: str | None

    def words(self) -> str:
        where = self.status if self.phase in (None, self.status) else f"{self.status}, {self.phase}"
        parts = [where, *(part for part in (self.transfer, self.host_says) if part)]
        return " · ".join(parts)


class JobProgress:
    """Reads the job, its runner's checkpointed phase, the watcher's last view of its instance and the SSH edge's
    transfer; shows them on `console`."""

    def __init__(self, console: Console, runtime: Runtime, job_id: int, transfer: Transfer) -> None:
        self.console = console
        self.runtime = runtime
        self.job_id = job_id
        self.transfer = transfer
        self.started = time.monotonic()
        self._live = console.is_terminal
        self._said: Moment | None = None
        self._told_ended = transfer.ended_count

    def moment(self, job: Job) -> Moment:
        phase = next(
            (
                str(row.state.get("phase"))
                for row in self.runtime.store.effects.daemons()
                if row.state.get("job") == job.id and row.state.get("phase")
            ),
            None,
        )
        view = self.runtime.store.load_snapshot().get(job.instance_id) if job.instance_id is not None else None
        booting = view is not None and view.instance.actual_status != "running"
        says = view.instance.status_msg if view is not None and booting else None  # "Pulling image ...", say
        moving = None
        if self.transfer.active:
            moving = f"{self.transfer.direction} {size(self.transfer.done)}"
        return Moment(job.status, phase, says, moving)

    def spent(self, job: Job) -> float | None:
        """Dollars so far: the instance's $/h since we first saw it (None before there is one)."""
        view = self.runtime.store.load_snapshot().get(job.instance_id) if job.instance_id is not None else None
        rate = job.dph_total or (view.instance.dph_total if view is not None else None)
        if view is None or rate is None:
            return None
        return rate * max(0.0, (self.runtime.clock.now() - view.first_seen).total_seconds()) / 3600

    def line(self, job: Job) -> str:
        moment = self.moment(job)
        elapsed = format_duration(time.monotonic() - self.started)
        if job.done and job.cost_usd is not None:
            return f"job {job.id} · {moment.words()} · {elapsed} · {money(job.cost_usd)}"
        spent = self.spent(job)
        return f"job {job.id} · {moment.words()} · {elapsed}" + (f" · {money(spent)} so far" if spent else "")

    def show(self, status: Status | None) -> None:
        job = self.runtime.store.repository(Jobs).get(self.job_id)
        if job is None:
            return
        if status is not None:
            status.update(self.line(job))
            return
        moment = self.moment(job)
        for direction, path, count in self.transfer.ended_since(self._told_ended):
            verb = "uploaded" if direction == "upload" else "downloaded"
            self.console.print(
                f"job {job.id}: {verb} {size(count)} ({path})", markup=False, highlight=False, soft_wrap=True
            )
        self._told_ended = self.transfer.ended_count
        key = Moment(moment.status, moment.phase, moment.host_says, None)
        if key != self._said:
            self._said = key
            self._say(self.line(job))

    def _say(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    @contextlib.asynccontextmanager
    async def shown(self) -> AsyncIterator[JobProgress]:
        """While inside: the status line (or the plain lines) kept up to date."""
        with contextlib.ExitStack() as stack:
            status = stack.enter_context(self.console.status("starting")) if self._live else None
            stack.enter_context(logs_through(self.console))

            async def refresh() -> None:
                while True:
                    self.show(status)
                    await asyncio.sleep(REFRESH_SECONDS)

            task = asyncio.create_task(refresh())
            try:
                yield self
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                self.show(status)
