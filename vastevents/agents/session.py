"""What an agent may do through ``vastevents mcp``, one method per tool, over the store and the Vast client.

Jobs run in the watcher: ``submit`` queues a job in the store exactly as ``run --submit`` does, and every other
job tool reads the store. A job is submitted only with a fresh quote from ``estimate`` for the same spec, so the
agent has seen (and can show) the price; it is refused above ``[agents]`` limits, above what this session may
still commit, and above what is left of a ``[handlers.billing]`` budget. A refusal is a :class:`Refused` whose
message says what to do instead.

"This session" is one ``vastevents mcp`` process: one agent's session over stdio, every client together over HTTP.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import secrets
import shlex
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vastevents._logging import REDACTED, register_secret
from vastevents.actions import Actions
from vastevents.clock import Clock, SystemClock
from vastevents.config import NO_API_KEY, Config
from vastevents.costs import budgets_left, cost_report, parse_since
from vastevents.errors import NotOwned, VastEventsError
from vastevents.events import AGENT_CALL, Event
from vastevents.jobspec import JobSpec, pack_dir
from vastevents.labels import job_label_prefix
from vastevents.models import Instance, Offer
from vastevents.ports import Ssh, SshTarget
from vastevents.store import Job, Jobs, Store
from vastevents.store.hosts import Hosts
from vastevents.store.jobs import JobPhase, JobStatus, check_inputs
from vastevents.store.ledger import Ledger, job_id_of
from vastevents.team import leading_watcher, no_watcher
from vastevents.vast import VastClient

ACTOR = "agent"
"""How the agent's own actions (``destroy``) are named in the store's intents."""
LISTED = 100
"""At most this many jobs (the newest) in ``jobs()``."""
EVENTS_PER_CALL = 200
"""At most this many events per ``events()`` call: call again with ``since_id`` set to the last id."""
WAIT_POLL = 0.5
"""Seconds between two reads of a job's row while ``wait`` waits."""

PUBLIC_INSTANCE_KEYS = (
    "id", "label", "actual_status", "intended_status", "status_msg", "gpu_name", "num_gpus", "gpu_ram",
    "dph_total", "machine_id", "host_id", "is_bid", "ssh_host", "ssh_port", "geolocation", "reliability2",
)  # fmt: skip
"""What an agent sees of an instance: never its env, onstart script or anything else a row may carry."""
OFFER_KEYS = (
    "id", "gpu_name", "num_gpus", "gpu_ram", "dph_total", "machine_id", "reliability2", "cuda_max_good",
    "disk_space", "cpu_cores", "cpu_ram", "inet_down", "inet_up", "geolocation",
)  # fmt: skip


class Refused(VastEventsError):
    """A call the server will not carry out; the message is one line that says what to do instead."""


@dataclass(frozen=True)
class Quote:
    id: str
    spec: dict[str, Any]
    """The normalized spec it priced: a submit must bring the same one."""
    offer: Offer
    max_cost_usd: float
    expires_at: datetime

    def to_json(self) -> dict[str, Any]:
        offer = self.offer
        return {
            "quote_id": self.id,
            "offer": {
                "id": offer.id,
                "gpu_name": offer.gpu_name,
                "num_gpus": offer.num_gpus,
                "dph_total": offer.dph_total,
                "machine_id": offer.machine_id,
            },
            "max_cost_usd": self.max_cost_usd,
            "expires_at": _iso(self.expires_at),
        }


class AgentSession:
    """The tools of one ``vastevents mcp`` process. `client` is None when there is no API key (then only the tools
    that read the store work); `ssh` reads a running job's log from its host."""

    def __init__(
        self, config: Config, store: Store, client: VastClient | None, ssh: Ssh, clock: Clock | None = None
    ) -> None:
        self.config = config
        self.store = store
        self._client = client
        self.ssh = ssh
        self.clock = clock or SystemClock()
        self.limits = config.agents
        self.jobs = store.repository(Jobs)
        self.quotes: dict[str, Quote] = {}
        self.used: set[str] = set()
        """Quotes a job was submitted with: one job per quote, so a retried submit cannot rent twice."""
        self.submitted: dict[int, float] = {}
        """Job id → the cost bound it was submitted with: what this session has committed."""

    # --- guards ---------------------------------------------------------------------------------------------

    @property
    def client(self) -> VastClient:
        if self._client is None:
            raise Refused(NO_API_KEY)
        return self._client

    def need_watcher(self) -> None:
        """Refuse at once when no watcher runs the jobs: nothing here would ever move."""
        if leading_watcher(self.store, self.config.watch.interval) is None:
            raise Refused(no_watcher(self.config.watch.interval))

    def journal_call(self, tool: str, arguments: dict[str, Any]) -> None:
        """Journal an ``agent_call`` (the tool and its arguments, secrets masked) before the call runs."""
        instance_id = arguments.get("instance_id") if tool == "destroy" else None
        detail = f"{tool} {json.dumps(_masked(arguments), sort_keys=True, default=str)}"
        event = Event(
            name=AGENT_CALL,
            instance_id=instance_id if isinstance(instance_id, int) else None,
            at=self.clock.now(),
            detail=detail,
        )
        self.store.append([event])

    # --- the market -----------------------------------------------------------------------------------------

    async def offers(self, query: str, limit: int) -> list[dict[str, Any]]:
        found = await self.client.search_offers(query, limit=limit)
        found.sort(key=lambda offer: (offer.dph_total is None, offer.dph_total or 0.0))
        return [_pick(offer.model_dump(mode="json"), OFFER_KEYS) for offer in found[:limit]]

    async def estimate(self, raw_spec: dict[str, Any]) -> dict[str, Any]:
        self.need_watcher()
        spec = self.normalize(raw_spec)
        blocked = self.store.repository(Hosts).blocked(self.clock.now())
        found = await spec.offers(self.client, blocked=blocked)
        if not found:
            raise Refused(f"no offer matches {spec.query!r}: loosen the query (the `offers` tool shows the market)")
        best = found[0]
        bound = spec.estimate(best)
        self.check_limits(best, bound)
        now = self.clock.now()
        self.quotes = {key: quote for key, quote in self.quotes.items() if quote.expires_at > now}  # forget stale ones
        quote = Quote(
            id=f"q-{secrets.token_urlsafe(9)}",
            spec=spec.to_json(),
            offer=best,
            max_cost_usd=bound,
            expires_at=now + timedelta(seconds=self.limits.quote_ttl),
        )
        self.quotes[quote.id] = quote
        return quote.to_json()

    def normalize(self, raw: dict[str, Any]) -> JobSpec:
        """The spec as it is priced and queued: validated, the upload dir absolute, ``max_duration`` set (an hour
        when not given, what the estimate counts on, so the price bound holds), ``out`` under the watcher's dir."""
        try:
            spec = JobSpec.model_validate(raw)
        except ValidationError as exc:
            raise Refused(_spec_problem(exc)) from None
        for value in spec.env.values():
            register_secret(value)
        changes: dict[str, Any] = {}
        if spec.max_duration is None:
            changes["max_duration"] = spec.hours * 3600.0
        if spec.upload is not None:
            upload = spec.upload.expanduser().resolve()
            if not upload.is_dir():
                raise Refused(f"spec.upload {str(spec.upload)!r} is not a directory on this machine: give an absolute"
                              " path to the job's input directory")  # fmt: skip
            changes["upload"] = upload
        if spec.out.is_absolute() or ".." in spec.out.parts:
            raise Refused(f"spec.out {str(spec.out)!r} must be a relative path without '..': results land in the"
                          " watcher's state directory, under jobs/job-<id>/")  # fmt: skip
        return spec.model_copy(update=changes)

    def check_limits(self, offer: Offer, bound: float) -> None:
        """Refuse a job on `offer` whose cost bound is `bound` if any limit would be passed."""
        limits, dph = self.limits, offer.dph_total or 0.0
        if limits.max_dph is not None and dph > limits.max_dph:
            raise Refused(f"the cheapest match costs ${dph:.4f}/h, above [agents] max_dph ${limits.max_dph:g}/h:"
                          " ask the user to raise it, or narrow the query to cheaper GPUs")  # fmt: skip
        if limits.max_job_usd is not None and bound > limits.max_job_usd:
            raise Refused(f"the job may cost up to ${bound:.4f}, above [agents] max_job_usd ${limits.max_job_usd:g}:"
                          " shorten max_duration or ask the user to raise the limit")  # fmt: skip
        if limits.session_budget_usd is not None:
            left = limits.session_budget_usd - self.committed()
            if bound > left:
                raise Refused(f"the job may cost up to ${bound:.4f}, more than the ${max(left, 0.0):.4f} left of this"
                              f" session's [agents] session_budget_usd ${limits.session_budget_usd:g}: shorten"
                              " max_duration, or ask the user to raise the budget")  # fmt: skip
        ledger = self.store.repository(Ledger)
        for budget in budgets_left(self.config, ledger.intervals(), self.watcher_now(), self._owns):
            if bound > budget.left_usd:
                raise Refused(f"the job may cost up to ${bound:.4f}, more than the ${max(budget.left_usd, 0.0):.4f}"
                              f" left of {budget.name}: ask the user before raising it")  # fmt: skip

    def committed(self) -> float:
        """What this session's jobs cost or may still cost: a job that ended counts what it cost, one that has
        not its bound."""
        total = 0.0
        for job_id, bound in self.submitted.items():
            job = self.jobs.get(job_id)
            total += (job.cost_usd or 0.0) if job is not None and job.done else bound
        return total

    def _owns(self, label: str | None) -> bool:
        prefix = self.config.vast.label_prefix
        return bool(prefix and label and label.startswith(prefix))

    def watcher_now(self) -> datetime:
        """The watcher's time at its last poll (its clock may be simulated), else this machine's."""
        taken = self.store.snapshots.taken_at()
        return datetime.fromisoformat(taken) if taken else self.clock.now()

    # --- jobs -----------------------------------------------------------------------------------------------

    async def submit(self, raw_spec: dict[str, Any], quote_id: str) -> dict[str, Any]:
        self.need_watcher()
        quote = self.quotes.get(quote_id)
        if quote is None:
            raise self._no_quote(quote_id)
        if self.clock.now() >= quote.expires_at:
            raise Refused(f"quote {quote_id} expired at {_iso(quote.expires_at)}: call `estimate` again (prices move)"
                          " and show the user the new price")  # fmt: skip
        spec = self.normalize(raw_spec)
        if spec.to_json() != quote.spec:
            raise Refused(f"quote {quote_id} priced a different spec: call `estimate` with exactly this spec")
        archive = await asyncio.to_thread(pack_dir, spec.upload) if spec.upload is not None else None
        if archive is not None:
            try:
                check_inputs(archive)
            except ValueError as exc:
                raise Refused(f"spec.upload: {exc}; let the job fetch large data itself") from None
        prefix = await job_label_prefix(self.config, self._client)
        # From here to the end nothing awaits: two calls at once cannot both spend the same budget or quote.
        if self.quotes.pop(quote_id, None) is None:
            raise self._no_quote(quote_id)
        self.used.add(quote_id)
        self.check_limits(quote.offer, quote.max_cost_usd)
        # The watcher searches again when it claims the job; it never rents above the quoted price or bound.
        dph = quote.offer.dph_total or 0.0
        queued = spec.model_copy(
            update={
                "upload": None,
                "max_dph": min(spec.max_dph or dph, dph),
                "max_cost": min(spec.max_cost or quote.max_cost_usd, quote.max_cost_usd),
            }
        )
        job = self.jobs.submit(
            queued.to_json(),
            [],
            prefix,
            self.clock.now(),
            submitted_by=f"{getpass.getuser()}@{socket.gethostname()} (agent)",
            inputs=archive,
        )
        self.submitted[job.id] = quote.max_cost_usd
        return {"job_id": job.id}

    def _no_quote(self, quote_id: str) -> Refused:
        if quote_id in self.used:
            return Refused(f"quote {quote_id} was used already (one job per quote): `jobs` shows the job it queued;"
                           " call `estimate` for another")  # fmt: skip
        return Refused(f"no quote {quote_id!r} in this session: call `estimate` with the spec, show the user the"
                       " price, then submit with its quote_id")  # fmt: skip

    def get(self, job_id: int) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise _no_job(job_id)
        return job

    def job(self, job_id: int) -> dict[str, Any]:
        return self.view(self.get(job_id))

    def view(self, job: Job) -> dict[str, Any]:
        """A job as ``job`` and ``wait`` show it; ``cost_usd`` is what it cost, or so far while it runs."""
        cost = job.cost_usd
        if not job.done and job.started_at is not None and job.dph_total is not None:
            cost = job.dph_total * max(0.0, (self.watcher_now() - job.started_at).total_seconds()) / 3600.0
        return {
            "job_id": job.id,
            "status": job.status,
            "phase": self.phase(job),
            "cause": job.cause,
            "instance_id": job.instance_id,
            "cost_usd": cost,
            "results_dir": job.results_dir,
        }

    def phase(self, job: Job) -> JobPhase | None:
        """The step the watcher's job monitor is at (connect, preflight, upload, start, monitor, collect)."""
        for row in self.store.effects.daemons():
            if row.state.get("job") == job.id and row.instance_id == job.instance_id:
                return JobPhase.stored(row.state.get("phase"))
        return None

    async def wait(self, job_id: int, timeout_s: float) -> dict[str, Any]:
        """The job once it changes (status, phase, cause or instance) or ends, or as it is after `timeout_s`."""
        self.need_watcher()
        job = self.get(job_id)
        first = current = self.view(job)
        deadline = time.monotonic() + timeout_s
        while not job.done and _same(current, first) and time.monotonic() < deadline:
            await asyncio.sleep(min(WAIT_POLL, max(0.0, deadline - time.monotonic())))
            job = self.get(job_id)
            current = self.view(job)
            if _same(current, first) and leading_watcher(self.store, self.config.watch.interval) is None:
                raise Refused(f"job {job_id} is {job.status} but {no_watcher(self.config.watch.interval)};"
                              " it goes on from where it was once one runs")  # fmt: skip
        return current

    def cancel(self, job_id: int) -> dict[str, Any]:
        """Ask the watcher to cancel the job (it destroys what the job rented); the request stays in the store, so
        a watcher started later carries it out too."""
        job = self.jobs.request_cancel(job_id, self.clock.now())
        if job is None:
            raise _no_job(job_id)
        return self.view(job)

    def list_jobs(self) -> list[dict[str, Any]]:
        jobs = self.jobs.list()[-LISTED:]
        return [{**job.to_json(), "phase": self.phase(job)} for job in jobs]

    async def logs(self, job_id: int, tail: int) -> dict[str, Any]:
        job = self.get(job_id)
        if not job.done and job.instance_id is not None and job.status in (JobStatus.RUNNING, JobStatus.COLLECTING):
            return {"job_id": job.id, "from": "instance", "text": await self._remote_log(job, tail)}
        log = self._downloaded_log(job, "try again once it runs")
        lines = log.read_text(errors="replace").splitlines(keepends=True)
        return {"job_id": job.id, "from": str(log), "text": "".join(lines[-tail:])}

    def log_text(self, job_id: int) -> str:
        """A job's downloaded log, whole (the ``vastevents://jobs/{job_id}/log`` resource)."""
        job = self.get(job_id)
        return self._downloaded_log(job, "the `logs` tool reads it from the host while it runs").read_text(
            errors="replace"
        )

    def _downloaded_log(self, job: Job, hint: str) -> Path:
        log = Path(job.results_dir) / "job.log" if job.results_dir is not None else None
        if log is None or not log.is_file():
            raise Refused(f"job {job.id} has no downloaded log yet (it is {job.status}): {hint}")
        return log

    async def _remote_log(self, job: Job, tail: int) -> str:
        spec = JobSpec.model_validate(job.spec)
        instance = await self.client.get_instance(job.instance_id or 0)
        if instance is None or not instance.ssh_host:
            raise Refused(f"job {job.id}'s instance is not reachable right now: try again in a moment")
        command = f"tail -n {int(tail)} {shlex.quote(spec.log_path)} 2>/dev/null || true"
        result = await self.ssh.run(SshTarget.of(instance, spec.ssh_user), command, timeout=30)
        return result.stdout

    # --- the journal, money and instances -------------------------------------------------------------------

    def events(self, since_id: int, names: Iterable[str]) -> list[dict[str, Any]]:
        wanted = sorted(set(names))
        if wanted:
            found = sorted((e for name in wanted for e in self.store.events(since=since_id, name=name)),
                           key=lambda event: event.id)  # fmt: skip
        else:
            found = self.store.events(since=since_id)
        return [public_event(event) for event in found[:EVENTS_PER_CALL]]

    async def cost(self, since: str | None) -> dict[str, Any]:
        try:
            start = parse_since(since) if since is not None else None
        except ValueError as exc:
            raise Refused(f"since: {exc}") from None
        ledger = self.store.repository(Ledger)
        report = await cost_report(ledger, self._client, now=self.watcher_now(), since=start)
        return report.to_json()

    async def instances(self) -> list[dict[str, Any]]:
        rows = sorted(await self.client.list_instances(), key=lambda instance: instance.id)
        return [
            {**public_instance(instance), "owned": self._owns(instance.label), "job_id": job_id_of(instance.label)}
            for instance in rows
        ]

    async def destroy(self, instance_id: int) -> dict[str, Any]:
        actions = Actions(self.client, self.store, self.clock, self.config)
        try:
            existed = await actions.destroy(ACTOR, instance_id)
        except NotOwned as exc:
            raise Refused(f"{exc}; a job's instance goes with `cancel`") from None
        return {"instance_id": instance_id, "destroyed": existed}


def _no_job(job_id: int) -> Refused:
    return Refused(f"no job {job_id}: the `jobs` tool lists them")


def public_instance(instance: Instance) -> dict[str, Any]:
    return _pick(instance.model_dump(mode="json"), PUBLIC_INSTANCE_KEYS)


def public_event(event: Event) -> dict[str, Any]:
    """The ``events --json`` object, its instance reduced to what :func:`public_instance` shows."""
    data = event.to_json()
    if event.instance is not None:
        data["instance"] = public_instance(event.instance)
    return data


def _pick(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: data.get(key) for key in keys}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a[key] == b[key] for key in ("status", "phase", "cause", "instance_id"))


def _masked(arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments with the values of a spec's ``env`` (where secrets go) masked."""
    spec = arguments.get("spec")
    if isinstance(spec, dict) and isinstance(spec.get("env"), dict):
        return {**arguments, "spec": {**spec, "env": dict.fromkeys(spec["env"], REDACTED)}}
    return arguments


def _spec_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in ("spec", *error["loc"]))
    return f"{where}: {str(error['msg']).removeprefix('Value error, ')} (see the tool's input schema)"


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")
