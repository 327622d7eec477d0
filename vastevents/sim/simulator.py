"""The Simulator: a World on a clock, served over HTTP on loopback, optionally backed by real sshd hosts."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from vastevents._logging import register_secret
from vastevents.clock import Clock, ManualClock, ScaledClock
from vastevents.errors import VastEventsError
from vastevents.sim.model import SimError, SimInstance
from vastevents.sim.scenario import builtin_scenario, load_scenario
from vastevents.sim.server import Api, SimHTTPServer
from vastevents.sim.sshhost import Gpus, SSHHosts
from vastevents.sim.wiretime import ClientClock, WireTime
from vastevents.sim.world import World

logger = logging.getLogger("vastevents.sim")

DEFAULT_HOSTS = 24


class SimStateError(VastEventsError):
    """The simulator's state file cannot be read; the message names it."""


class Simulator:
    """A local Vast: ``with Simulator(clock=ManualClock()) as sim: httpx.get(sim.url + ...)``.

    Instance state is a function of `clock` (evaluated on every request and admin call), so a ManualClock
    fully drives it: ``sim.clock.advance(90)`` then poll, or step from one `next_due` moment to the next.
    The admin helpers mirror ``POST /_sim/<action>``. `description` is the scenario's one line ("" if none).
    """

    def __init__(
        self,
        *,
        api_key: str = "sim-key",
        clock: Clock | None = None,
        speed: float = 1.0,
        scenario: Path | str | None = None,  # a file, or a built-in scenario's name ("demo")
        state: Path | None = None,
        ssh: bool = False,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        hosts: int | None = None,
        rate_limits: bool = True,
        flaky: float | None = None,
    ) -> None:
        register_secret(api_key)
        self.api_key = api_key
        self.host = host
        self.port = port
        self.state_path = Path(state) if state is not None else None
        self.stopping = threading.Event()
        self._lock = threading.RLock()
        self._server: SimHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ssh = SSHHosts() if ssh else None
        plan = load_scenario(scenario) if scenario is not None else None
        self.description = plan.description if plan is not None else ""
        saved = self.state_path is not None and self.state_path.exists()
        restored = self._load_state(self.state_path) if self.state_path is not None and saved else None
        self.clock, wire = _clocks(clock, speed, restored)
        self.speed = self.clock.speed if isinstance(self.clock, ScaledClock) else speed  # simulated s per wall s
        self.client_clock: Clock = ClientClock(self.clock, wire)
        """The clock the clients read (webhook timestamps): the simulator's own, or the wall clock (see wiretime)."""
        now = self.clock.now().timestamp()
        if restored is not None:
            self._world = restored
        elif plan is not None and plan.machines:
            self._world = World.from_machines(plan.machines, origin=now)
        else:
            seed = plan.seed if plan is not None and plan.seed is not None else seed
            count = hosts or (plan.hosts if plan is not None and plan.hosts else DEFAULT_HOSTS)
            share = flaky if flaky is not None else (plan.flaky if plan is not None else 0.0)
            self._world = World.generate(seed=seed, hosts=count, origin=now, flaky=share)
        self._world.wire = wire
        if plan is not None:
            self._world.set_steps(plan.steps)
            if plan.credit is not None:
                self._world.credit = plan.credit
        self._api = Api(self, rate_limits=rate_limits)
        if self._ssh is not None:
            self._world.backend = self._ssh
            self._world.port_for = self._ssh.port_for
            self._ssh.gpus_for = self._gpus
            self._ssh.broken_machines |= {m.machine_id for m in self._world.machines.values() if m.gpu_broken}

    @staticmethod
    def builtin_scenario(name: str = "demo") -> Path:
        return builtin_scenario(name)

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Simulator:
        """Bind the port and serve; if any part fails, what was started is stopped again before raising."""
        if self._server is not None:
            return self
        self.stopping.clear()
        try:
            if self._ssh is not None:
                self._ssh.start()
            self._server = SimHTTPServer((self.host, self.port), self._api)
            self.port = self._server.server_address[1]
            if self._ssh is not None:
                with self._lock:
                    for inst in self._world.instances.values():
                        if inst.actual_status == "running":
                            self._ssh.instance_up(inst, inst.ssh_keys)
            with self.world():
                pass  # plays the steps due at start, so scripted instances exist before the first request
        except BaseException:
            self.stop()
            raise
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="vastevents-sim-http", daemon=True
        )
        self._thread.start()
        logger.debug("simulator listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving, end every sshd and job it started, and save the state file."""
        self.stopping.set()
        if self._server is not None:
            if self._thread is not None:
                self._server.shutdown()  # waits for serve_forever, so only once it was started
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None
        if self._ssh is not None:
            self._ssh.close()
        self.save()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def scenario_end(self) -> datetime | None:
        """When the scenario's last step plays (None without a scenario): the story is over once a poll saw it."""
        end = self._world.scenario_end
        return datetime.fromtimestamp(end, UTC) if end is not None else None

    def next_due(self) -> datetime | None:
        """The next simulated moment after the clock's now at which the world changes by itself, or None.

        That is the next scenario step, instance transition (scheduling -> created -> loading -> running, a
        restart or reboot done, a flapping host back), contract expiry, or end of a fault storm. On a ManualClock
        this steps a run deterministically: advance the clock to it, list instances (the API answers from the
        state at the clock's now, so the change is seen), ask again; stop once it is past `scenario_end`::

            while (due := sim.next_due()) is not None and due <= sim.scenario_end:
                clock.advance((due - clock.now()).total_seconds())
                ...poll...

        Requests in between (a create, a stop) can bring an earlier moment, so ask after each poll, never ahead.
        The moment is rounded up to the microsecond, so advancing a clock to it always plays what is due.
        """
        with self.world() as world:
            due = world.next_due()
        if due is None:
            return None
        moment = datetime.fromtimestamp(due, UTC)
        return moment if moment.timestamp() >= due else moment + timedelta(microseconds=1)

    def _gpus(self, inst: SimInstance) -> Gpus:
        machine = self._world.machines[inst.machine_id]
        return Gpus(machine.gpu_name, inst.num_gpus, machine.gpu_ram, machine.cuda_max_good)

    def break_gpus(self, machine_id: int) -> None:
        """A host whose GPUs are not visible: nvidia-smi fails on its instances (needs ``ssh=True``)."""
        if self._ssh is None:
            raise SimError(400, "invalid_args", "only a simulator with ssh hosts runs nvidia-smi")
        with self._lock:
            on_machine = [i.id for i in self._world.instances.values() if i.machine_id == machine_id]
        self._ssh.break_gpus(machine_id, on_machine)

    def ssh_pids(self) -> list[int]:
        """Process ids of the sshd servers (and their jobs) currently running for instances (under the world's lock:
        the server's thread starts and ends hosts as instances change)."""
        if self._ssh is None:
            return []
        with self._lock:
            return self._ssh.pids()

    # ----------------------------------------------------------------- world access

    @contextmanager
    def world(self) -> Iterator[World]:
        """The world, locked and advanced to the clock's now."""
        with self._lock:
            self._world.advance(self.clock.now().timestamp())
            yield self._world

    def advance(self, seconds: float) -> datetime:
        """Move a ManualClock forward (admin `/_sim/advance`) and return the new now; other clocks move on their own."""
        if not isinstance(self.clock, ManualClock):
            raise SimError(400, "invalid_args", "only a simulator on a manual clock can be advanced")
        now = self.clock.advance(seconds)
        with self.world():
            pass
        return now

    def save(self) -> None:
        if self.state_path is None:
            return
        with self._lock:
            data = json.dumps(self._world.to_dict())
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.state_path.parent, prefix=".sim-state-")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(data)
        os.replace(tmp, self.state_path)

    @staticmethod
    def _load_state(path: Path) -> World:
        try:
            return World.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SimStateError(f"{path}: cannot load simulator state ({exc}); move it away to start fresh") from None

    # ----------------------------------------------------------------- views used by the API

    def row(self, inst: SimInstance) -> dict[str, Any]:
        return self._world.instance_row(inst, ssh_host=self.host)

    def instance_log(self, inst: SimInstance, *, daemon_only: bool = False) -> str:
        """The daemon's lines (status changes, the status message), then what the onstart script printed."""
        wire = self._world.wire
        lines = [f"{wire.iso(at)} status {status or 'scheduling'}\n" for at, status in inst.history]
        if inst.status_msg:
            lines.append(f"{wire.iso(self._world.now)} {inst.status_msg}\n")
        if self._ssh is not None and not daemon_only:
            lines.append(self._ssh.onstart_output(inst.id))
        return "".join(lines)

    def execute(self, inst: SimInstance, argv: list[str]) -> str:
        """Output of one constrained command in the instance's filesystem (only ssh hosts have one)."""
        if self._ssh is None:
            return "(this simulator has no container filesystems: start it with ssh hosts, --ssh)\n"
        return self._ssh.execute(inst.id, argv)

    def container_root(self, inst: SimInstance) -> str | None:
        """Where the instance's container filesystem lives on this machine (None without ssh hosts)."""
        return str(self._ssh.directory(inst.id)) if self._ssh is not None else None

    def keys_changed(self, inst: SimInstance) -> None:
        if self._ssh is not None:
            self._ssh.update_keys(inst.id, inst.ssh_keys)

    def state(self) -> dict[str, Any]:
        """Everything `/_sim/state` and `vastevents sim --status` show: hosts, instances, spend, faults."""
        with self.world() as world:
            machines = [
                {
                    "machine_id": m.machine_id,
                    "host_id": m.host_id,
                    "gpu_name": m.gpu_name,
                    "num_gpus": m.num_gpus,
                    "free_gpus": m.num_gpus - m.used_gpus,
                    "dph_per_gpu": m.dph_per_gpu,
                    "reliability": m.reliability,
                    "geolocation": m.geolocation,
                    "offline": m.offline,
                    "flaky": m.flaky,
                }
                for m in world.machines.values()
            ]
            spend: list[dict[str, Any]] = []
            total = world.spend()  # volumes' storage too
            for inst in world.all_instances():
                cost = world.charges(inst)
                spend.append({"id": inst.id, "label": inst.label, "machine_id": inst.machine_id, "gpu_usd": cost.gpu,
                              "storage_usd": cost.storage, "ended": inst.ended_at is not None})  # fmt: skip
            return {
                "now": datetime.fromtimestamp(world.now, UTC).isoformat(),
                "url": self.url,
                "speed": self.speed,
                "scenario_end": self.scenario_end.isoformat() if self.scenario_end else None,
                "steps_done": world.steps_done,
                "steps_total": len(world.steps),
                "machines": machines,
                "instances": [self.row(inst) for inst in sorted(world.instances.values(), key=lambda i: i.id)],
                "spend": {"total_usd": total, "instances": spend},
                "faults": {
                    "storms": [vars(s) for s in world.active_storms()],
                    "pending_no_such_ask": world.pending_races,
                    "pending_create_errors": world.pending_create_errors,
                    "pending_reprices": list(world.pending_reprices),
                },
                "ssh": self._ssh.ports() if self._ssh is not None else {},
            }

    # ----------------------------------------------------------------- admin helpers (no rate limits)

    def apply(self, action: str, **params: Any) -> dict[str, Any]:
        """Run one fault or scripted action now (same names and keys as scenario steps)."""
        with self.world() as world:
            result = world.apply(action, params)
        self.save()
        return result

    def create_instance(
        self,
        ask_id: int | None = None,
        *,
        label: str | None = None,
        image: str = "pytorch/pytorch",
        disk: float = 32.0,
        bid: float | bool | None = None,
        pull: float | str | None = None,
        gpu_name: str | None = None,
        num_gpus: int = 1,
        onstart: str | None = None,
        env: dict[str, str] | None = None,
    ) -> int:
        params: dict[str, Any] = {"label": label, "image": image, "disk": disk, "num_gpus": num_gpus}
        optional = {"ask": ask_id, "bid": bid, "pull": pull, "gpu_name": gpu_name, "onstart": onstart, "env": env}
        params.update({k: v for k, v in optional.items() if v is not None})
        return int(self.apply("create", **params)["new_contract"])

    def preempt(self, ref: int | str) -> None:
        self.apply("preempt", instance=ref)

    def set_offline(self, ref: int | str | None = None, *, machine_id: int | None = None) -> None:
        self.apply("offline", **({"machine": machine_id} if machine_id is not None else {"instance": ref}))

    def set_online(self, ref: int | str | None = None, *, machine_id: int | None = None) -> None:
        self.apply("online", **({"machine": machine_id} if machine_id is not None else {"instance": ref}))

    def stick_loading(self, ref: int | str, msg: str | None = None) -> None:
        self.apply("stuck_loading", instance=ref, **({"msg": msg} if msg else {}))

    def vanish(self, ref: int | str) -> None:
        self.apply("vanish", instance=ref)

    def notify(self, notif_type: str, subject: str, data: dict[str, Any] | None = None) -> list[int]:
        """Send a signed notification (e.g. ``outbid``) to every webhook subscribed to it; each answer's status."""
        return self._api.webhooks.notify(notif_type, subject, data)

    def instance_count(self) -> int:
        with self.world() as world:
            return len(world.instances)

    def instance(self, ref: int | str) -> dict[str, Any] | None:
        """The API row of a live instance (by id or label), or None once it is gone."""
        with self.world() as world:
            try:
                return self.row(world.resolve(ref))
            except SimError:
                return None


def _clocks(clock: Clock | None, speed: float, restored: World | None) -> tuple[Clock, WireTime]:
    """The simulated clock, and how its times look to the clients (see :mod:`~vastevents.sim.wiretime`).

    A clock the caller passes is shared with its clients (a test's ManualClock, ``watch --sim``): they see its
    times as they are. Otherwise the simulator runs its own clock at `speed`, from the wall clock's now (or from
    where a restored world's time stood, if that is later), and its clients read the wall clock.
    """
    if clock is not None:
        return clock, WireTime()
    wall = time.time()
    start = max(wall, restored.now) if restored is not None else wall
    scaled = ScaledClock(speed, start=datetime.fromtimestamp(start, UTC))
    return scaled, WireTime.on_wall_clock(sim_now=start, wall_now=wall, speed=speed)
