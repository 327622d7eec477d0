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

    @property
    def mounted_volume(self) -> tuple[int, str] | None:
        """The volume this instance has (id and mount path), as its row's ``volume_info`` says; None without."""
        rows = (self.model_extra or {}).get("volume_info")
        first = rows[0] if isinstance(rows, list) and rows else None
        if not isinstance(first, Mapping):
            return None
        volume_id, path = first.get("id"), first.get("mount_path")
        if not isinstance(volume_id, int) or not isinstance(path, str):
            return None
        return volume_id, path


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


class Volume(_VastModel):
    """One of the account's volumes (``show volumes``): disk on one machine that outlives its instances."""

    id: int
    name: str | None = None
    machine_id: int | None = None
    host_id: int | None = None
    disk_space: float | None = None
    """Its size in GB."""
    status: str | None = None
    dph_total: float | None = None
    """What it bills per hour (its size at the machine's storage price)."""
    start_date: float | None = None
    instances: tuple[int, ...] = ()
    """The live instances using it."""

    _blank = field_validator("machine_id", "host_id", "disk_space", "dph_total", mode="before")(_blank_to_none)

    @field_validator("instances", mode="before")
    @classmethod
    def _instance_ids(cls, value: Any) -> tuple[int, ...]:
        """Ids however they come (a list of ids or of rows with an ``id``); anything else is left out."""
        rows = value if isinstance(value, list | tuple) else []
        ids = [row.get("id") if isinstance(row, Mapping) else row for row in rows]
        return tuple(int(i) for i in ids if isinstance(i, int | str) and str(i).isdigit())


@dataclass(frozen=True)
class VolumeMount:
    """A local volume for a create, mounted at `mount_path` (an absolute path below ``/root``).

    :meth:`new` makes one of `size` GB from a volume offer of the rented machine; :meth:`existing` links a volume
    that already lives on that machine. A volume bills its size until deleted, whatever becomes of its instances.
    """

    volume_id: int
    """The volume offer's id for a new volume, the volume's own id for an existing one."""
    mount_path: str
    size: float | None = None
    """GB of a new volume; None links an existing one."""
    name: str | None = None

    @classmethod
    def new(cls, offer_id: int, size: float, mount_path: str, name: str | None = None) -> VolumeMount:
        return cls(offer_id, mount_path, size, name)

    @classmethod
    def existing(cls, volume_id: int, mount_path: str) -> VolumeMount:
        return cls(volume_id, mount_path)

    @property
    def creates(self) -> bool:
        return self.size is not None

    def to_wire(self) -> dict[str, Any]:
        """The create request's ``volume_info``, as the official CLI sends it."""
        info: dict[str, Any] = {"mount_path": self.mount_path, "create_new": self.creates, "volume_id": self.volume_id}
        if self.size is not None:
            info["size"] = self.size
        if self.name:
            info["name"] = self.name
        return info


@dataclass(frozen=True)
class Rental:
    """What to rent and what runs there: one create request, ``Rental(offer.id, image=..., disk=...)``.

    A non-null `price` makes it an interruptible bid at that $/h; `onstart` runs when the instance starts. A
    template (`template_hash`, or `template_id` for its newest version) gives the image, env and onstart the
    rental leaves out. `image_login` is the registry login of a private image (``-u USER -p TOKEN REGISTRY``): it
    goes into the request and nowhere else (not into ``repr``).
    """

    ask_id: int
    """The offer's ``id`` (Vast rents by "ask")."""
    _: KW_ONLY
    image: str | None = None
    """The Docker image; None (or empty) to take the template's."""
    disk: float
    """Disk in GB."""
    label: str | None = None
    price: float | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    onstart: str | None = None
    runtype: str = "ssh_direct"
    template_hash: str | None = None
    template_id: int | None = None
    image_login: str | None = field(default=None, repr=False)
    volume: VolumeMount | None = None

    def __post_init__(self) -> None:
        if not (self.image or self.template_hash or self.template_id is not None):
            raise ValueError("a rental needs an image or a template (template_hash, template_id)")
