"""Typed, tolerant views of what the Vast API returns.

Pure core: no I/O. Unknown fields are kept (``extra="allow"``), numbers sent as strings are coerced,
and an unknown ``actual_status`` maps to :attr:`State.UNKNOWN` while the raw value stays on the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator


class State(StrEnum):
    """An instance's ``actual_status`` as vastevents names it (``null`` is ``scheduling``)."""

    SCHEDULING = "scheduling"
    CREATED = "created"
    LOADING = "loading"
    RUNNING = "running"
    STOPPED = "stopped"
    EXITED = "exited"
    FROZEN = "frozen"
    REBOOTING = "rebooting"
    OFFLINE = "offline"
    UNKNOWN = "unknown"

    @classmethod
    def from_raw(cls, raw: str | None) -> State:
        """Map a raw Vast status string to a state; ``None`` is scheduling, anything new is unknown."""
        if raw is None:
            return cls.SCHEDULING
        state = _STATES.get(raw)  # the common case, looked up without normalizing
        if state is not None:
            return state
        try:
            return cls(raw.strip().lower())
        except ValueError:
            return cls.UNKNOWN


_STATES = {state.value: state for state in State}


def _blank_to_none(value: Any) -> Any:
    if isinstance(value, str) and value.strip() == "":
        return None
    return value


class _VastModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)


class Instance(_VastModel):
    """One row of the instance list (or ``show instance``)."""

    id: int
    actual_status: str | None = None
    intended_status: str | None = None
    cur_state: str | None = None
    next_state: str | None = None
    status_msg: str | None = None
    label: str | None = None
    machine_id: int | None = None
    host_id: int | None = None
    gpu_name: str | None = None
    num_gpus: int | None = None
    gpu_ram: float | None = None
    gpu_util: float | None = None
    disk_space: float | None = None
    disk_util: float | None = None
    dph_total: float | None = None
    dph_base: float | None = None
    storage_cost: float | None = None
    is_bid: bool | None = None
    min_bid: float | None = None
    ssh_host: str | None = None
    ssh_port: int | None = None
    public_ipaddr: str | None = None
    start_date: float | None = None
    end_date: float | None = None
    image_uuid: str | None = None
    onstart: str | None = None
    reliability2: float | None = None
    geolocation: str | None = None

    _blank = field_validator(
        "machine_id",
        "host_id",
        "num_gpus",
        "ssh_port",
        "gpu_ram",
        "dph_total",
        "start_date",
        "end_date",
        mode="before",
    )(_blank_to_none)

    @property
    def state(self) -> State:
        return State.from_raw(self.actual_status)

    @property
    def raw_status(self) -> str | None:
        """The status string exactly as Vast sent it."""
        return self.actual_status


class Offer(_VastModel):
    """One row of an offer search: ``id`` is the ask id you rent with."""

    id: int
    machine_id: int | None = None
    host_id: int | None = None
    gpu_name: str | None = None
    num_gpus: int | None = None
    gpu_ram: float | None = None
    gpu_total_ram: float | None = None
    cpu_cores: float | None = None
    cpu_ram: float | None = None
    disk_space: float | None = None
    dph_total: float | None = None
    dph_base: float | None = None
    storage_cost: float | None = None
    min_bid: float | None = None
    reliability2: float | None = None
    cuda_max_good: float | None = None
    inet_down: float | None = None
    inet_up: float | None = None
    geolocation: str | None = None
    verification: str | None = None
    rentable: bool | None = None
    rented: bool | None = None


@dataclass(frozen=True)
class Rental:
    """What to rent and what runs there: one create request, ``Rental(offer.id, image=..., disk=...)``.

    A non-null `price` makes it an interruptible bid at that $/h; `onstart` runs when the instance starts.
    """

    ask_id: int
    """The offer's ``id`` (Vast rents by "ask")."""
    _: KW_ONLY
    image: str
    disk: float
    """Disk in GB."""
    label: str | None = None
    price: float | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    onstart: str | None = None
    runtype: str = "ssh_direct"
