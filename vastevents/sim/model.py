"""The simulator's values: machines, offers (asks), instances, timeline steps, fault storms, and its error.

Plain mutable dataclasses: the World owns and changes them under the Simulator's lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

DEFAULT_PULL_S = 60.0  # loading -> running (image pull and boot)


class SimError(Exception):
    """A request the real API would refuse; the server renders it as ``{"success": false, "error", "msg"}``."""

    def __init__(self, status: int, error: str, msg: str, **extra: Any) -> None:
        super().__init__(msg)
        self.status = status
        self.error = error
        self.msg = msg
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"success": False, "error": self.error, "msg": self.msg, **self.extra}


class HostBackend(Protocol):
    """What runs an instance's "container" (real sshd hosts); the world only says when."""

    def instance_up(self, instance: SimInstance, authorized_keys: Sequence[str]) -> None: ...

    def instance_down(self, instance_id: int) -> None: ...

    def instance_gone(self, instance_id: int) -> None: ...

    def instance_reset(self, instance_id: int) -> None:
        """A fresh container filesystem (recycle, update): everything but the volumes is gone."""
        ...

    def rekey(self, instance_id: int) -> None:
        """The instance's SSH server presents a new host key from now on."""
        ...

    def ssh_down(self, instance_id: int) -> None:
        """The instance's SSH server stops, its open sessions with it; the instance and its jobs go on."""
        ...

    def volume_gone(self, volume_id: int) -> None: ...

    def volume_cloned(self, source_id: int, volume_id: int) -> None: ...


@dataclass
class Machine:
    machine_id: int
    host_id: int
    gpu_name: str
    num_gpus: int
    gpu_ram: float  # MB per GPU
    cpu_cores: int
    cpu_ram: float  # MB
    disk_space: float  # GB
    dph_per_gpu: float
    storage_cost: float  # $/GB/month
    min_bid_per_gpu: float
    reliability: float
    geolocation: str
    cuda_max_good: float
    inet_down: float
    inet_up: float
    end_date: float
    offline: bool = False
    used_gpus: int = 0  # by our instances and by renters elsewhere
    ssh_delay_s: float | None = 0.0  # running -> SSH answers (with ssh hosts); None: it never does
    outbid_every_s: float = 0.0  # mean seconds between competing bids on a bid instance (0: nobody competes)
    gpu_broken: bool = False  # nvidia-smi fails on its instances (with ssh hosts)
    flaky: str | None = None  # which misbehaviour a seeded flaky market gave it (see market.FLAKY_KINDS)


@dataclass
class Ask:
    id: int
    machine_id: int
    num_gpus: int


@dataclass
class SimInstance:
    id: int
    machine_id: int
    num_gpus: int
    image: str
    disk: float
    label: str | None
    onstart: str | None
    env: dict[str, str]
    is_bid: bool
    bid_price: float | None
    runtype: str
    created_at: float
    end_date: float
    ssh_port: int
    pull_s: float = DEFAULT_PULL_S
    actual_status: str | None = None
    intended_status: str = "running"
    cur_state: str = "stopped"
    next_state: str = "running"
    status_msg: str | None = None
    due_at: float | None = None
    due_target: str | None = None
    due_token: int = 0
    paused_due: tuple[str, float] | None = None  # (target, seconds left) while the host is offline
    before_offline: tuple[str | None, str, str, str | None] | None = None
    stuck_msg: str | None = None
    gpu_util: float = 0.0
    disk_util: float = 0.0
    history: list[tuple[float, str | None]] = field(default_factory=list)
    ended_at: float | None = None  # destroyed or vanished
    ssh_keys: list[str] = field(default_factory=list)  # the keys that log in: the account's at create, attached
    template_id: int | None = None
    template_hash_id: str | None = None
    template_name: str | None = None
    volume_id: int | None = None
    mount_path: str | None = None
    bid_round: int = 0  # the competing bid now due for it (see Lifecycle.arm_competition)
    deposit: float = 0.0  # $ prepaid (prepay instance)
    discount_rate: float = 0.0
    prepaid_at: float | None = None


@dataclass
class SimVolume:
    """A local volume: disk on one machine, billed by size until deleted, outliving the instances it is used by."""

    id: int
    machine_id: int
    size: float  # GB
    name: str | None
    created_at: float
    ended_at: float | None = None  # deleted


@dataclass
class Step:
    """One scripted action of a scenario, `at` seconds after the scenario's origin."""

    at: float
    action: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Storm:
    kind: str  # "rate_limit" | "server_error" | "slow"
    start: float
    end: float
    status: int = 429
    delay: float = 0.0
