"""Local volumes: offers (a machine's free disk), volumes rented alone or with an instance, their rows and charges.

A volume lives on one machine: an instance uses it only if it runs there (created with it from a volume offer
of the same machine, or linked to an existing volume there). It outlives its instances, bills its size at the
machine's storage price until it is deleted, and refuses deletion while a live instance uses it. With real
ssh hosts its files sit in a directory that each instance using it sees at its mount path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from vastevents.sim.hardware import hardware
from vastevents.sim.lifecycle import Lifecycle
from vastevents.sim.market import HOURS_PER_MONTH
from vastevents.sim.matching import matches, sort_rows
from vastevents.sim.model import Ask, Machine, SimError, SimVolume
from vastevents.sim.params import number_param

OFFER_OFFSET = 90_000_000
"""A machine's volume offer id is this plus its machine id (stable: volume offers do not follow GPU capacity)."""
DEFAULT_SIZE = 15.0  # GB, as the CLI's


def free_space(world: Lifecycle, machine: Machine) -> float:
    """GB a new volume can take on `machine`: its disk less the live volumes there."""
    taken = sum(v.size for v in world.volumes.values() if v.machine_id == machine.machine_id and v.ended_at is None)
    return max(0.0, machine.disk_space - taken)


def offer_row(world: Lifecycle, machine: Machine, *, storage_gb: float) -> dict[str, Any]:
    h = hardware(machine)
    return {
        "id": OFFER_OFFSET + machine.machine_id,
        "ask_contract_id": OFFER_OFFSET + machine.machine_id,
        "machine_id": machine.machine_id,
        "host_id": machine.host_id,
        "cluster_id": None,
        "disk_space": free_space(world, machine),
        "storage_cost": machine.storage_cost,
        "dph_total": round(machine.storage_cost * storage_gb / HOURS_PER_MONTH, 6),
        "cpu_arch": h.cpu_arch,
        "cpu_ghz": h.cpu_ghz,
        "cuda_max_good": machine.cuda_max_good,
        "cuda_vers": machine.cuda_max_good,
        "datacenter": False,
        "disk_bw": h.disk_bw,
        "disk_name": h.disk_name,
        "driver_version": h.driver_version,
        "duration": world.wire.span(machine.end_date - world.now),
        "end_date": world.wire.at(machine.end_date),
        "geolocation": machine.geolocation,
        "gpu_arch": h.gpu_arch,
        "has_avx": h.has_avx,
        "inet_down": machine.inet_down,
        "inet_up": machine.inet_up,
        "nw_disk_min_bw": None,
        "nw_disk_avg_bw": None,
        "nw_disk_max_bw": None,
        "pci_gen": h.pci_gen,
        "pcie_bw": h.pcie_bw,
        "reliability": machine.reliability,
        "reliability2": machine.reliability,
        "score": round(machine.reliability * 100.0 / max(machine.storage_cost, 0.001), 3),
        "static_ip": True,
        "total_flops": round(machine.num_gpus * machine.gpu_ram / 1024.0, 1),
        "ubuntu_version": h.ubuntu_version,
        "verification": "verified",
        "verified": True,
        "external": False,
        "rentable": True,
    }


_SEARCH_CONTROLS = frozenset({"order", "limit", "allocated_storage", "type"})


def search(world: Lifecycle, query: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Volume offers matching a Vast search query (``search volumes``); unknown fields are a 400."""
    storage = number_param(query.get("allocated_storage"), 1.0, what="allocated_storage")
    rows = [offer_row(world, m, storage_gb=storage) for m in world.machines.values() if not m.offline]
    filters = {k: v for k, v in query.items() if k not in _SEARCH_CONTROLS}
    unknown = sorted(set(filters) - set(rows[0])) if rows else []
    if unknown:
        raise SimError(400, "invalid_args", f"Unknown search field(s): {', '.join(unknown)}.")
    order = query.get("order") or [["score", "desc"]]
    if not isinstance(order, list):
        raise SimError(400, "invalid_args", f"order must be a list of [field, direction] pairs, not {order!r}")
    rows = sort_rows([row for row in rows if matches(row, filters)], order)
    return rows[: max(int(number_param(query.get("limit"), 64, what="limit")), 0)]


def _offer_machine(world: Lifecycle, offer_id: Any) -> Machine:
    try:
        machine = world.machines.get(int(offer_id) - OFFER_OFFSET)
    except (TypeError, ValueError):
        machine = None
    if machine is None or machine.offline:
        raise SimError(404, "no_such_ask", f"Volume offer {offer_id} is no longer available.")
    return machine


def _size(value: Any, machine: Machine, world: Lifecycle) -> float:
    size = number_param(value, DEFAULT_SIZE, what="size")
    free = free_space(world, machine)
    if not (math.isfinite(size) and 0 < size <= free):
        raise SimError(400, "invalid_args", f"size must be between 0 and the offer's free {free:g} GB, got {size:g}")
    return size


def create(world: Lifecycle, offer_id: Any, *, size: Any, name: Any) -> SimVolume:
    """Rent `size` GB of a volume offer's machine."""
    machine = _offer_machine(world, offer_id)
    volume = SimVolume(
        id=world.next_volume_id,
        machine_id=machine.machine_id,
        size=_size(size, machine, world),
        name=str(name) if name else None,
        created_at=world.now,
    )
    world.next_volume_id += 1
    world.volumes[volume.id] = volume
    return volume


def volume(world: Lifecycle, volume_id: Any) -> SimVolume:
    try:
        found = world.volumes.get(int(volume_id))
    except (TypeError, ValueError):
        found = None
    if found is None or found.ended_at is not None:
        raise SimError(404, "no_such_volume", f"No volume {volume_id}.")
    return found


def users(world: Lifecycle, vol: SimVolume) -> list[int]:
    """The live instances using the volume."""
    return sorted(i.id for i in world.instances.values() if i.volume_id == vol.id)


def delete(world: Lifecycle, volume_id: Any) -> SimVolume:
    vol = volume(world, volume_id)
    if users(world, vol):
        raise SimError(400, "volume_in_use", f"Volume {vol.id} is used by instance(s) {users(world, vol)}: "
                       "destroy them first.")  # fmt: skip
    vol.ended_at = world.now
    if world.backend is not None:
        world.backend.volume_gone(vol.id)
    return vol


def clone(world: Lifecycle, source_id: Any, offer_id: Any, *, size: Any) -> SimVolume:
    """A new volume on an offer's machine holding a copy of `source_id`'s files (at least its size)."""
    source = volume(world, source_id)
    wanted = number_param(size, source.size, what="size")
    if wanted < source.size:
        raise SimError(400, "invalid_args", f"size must be at least the source's {source.size:g} GB")
    copy = create(world, offer_id, size=wanted, name=source.name)
    if world.backend is not None:
        world.backend.volume_cloned(source.id, copy.id)
    return copy


def for_create(world: Lifecycle, ask: Ask, info: Any) -> tuple[SimVolume, str] | None:
    """The volume a create's ``volume_info`` asks for (made or linked) and its mount path; checked first."""
    if info is None:
        return None
    if not isinstance(info, Mapping):
        raise SimError(400, "invalid_args", "volume_info must be an object")
    mount_path = info.get("mount_path")
    if not isinstance(mount_path, str) or not mount_path.startswith("/") or mount_path.strip("/") == "":
        raise SimError(400, "invalid_args", f"mount_path must be an absolute path below /, got {mount_path!r}")
    if ".." in mount_path.split("/"):
        raise SimError(400, "invalid_args", f"mount_path must not contain '..', got {mount_path!r}")
    if mount_path.rstrip("/") == "/root":
        raise SimError(400, "invalid_args", "mount_path /root is the container's home: mount below it (/root/data)")
    if info.get("create_new"):
        machine = _offer_machine(world, info.get("volume_id"))
        if machine.machine_id != ask.machine_id:
            raise SimError(400, "invalid_args", f"volume offer {info.get('volume_id')} is on machine "
                           f"{machine.machine_id}, the instance's offer on machine {ask.machine_id}")  # fmt: skip
        return create(world, info.get("volume_id"), size=info.get("size"), name=info.get("name")), mount_path
    linked = volume(world, info.get("volume_id"))
    if linked.machine_id != ask.machine_id:
        raise SimError(400, "invalid_args", f"volume {linked.id} is on machine {linked.machine_id}, the instance's "
                       f"offer on machine {ask.machine_id}: a local volume is used where it lives")  # fmt: skip
    return linked, mount_path


def charges(world: Lifecycle, vol: SimVolume) -> float:
    """$ so far: size x the machine's storage price per month, per second of the clients' clock."""
    end = vol.ended_at if vol.ended_at is not None else world.now
    per_second = world.machines[vol.machine_id].storage_cost * vol.size / HOURS_PER_MONTH / 3600.0
    return world.wire.span((end - vol.created_at) * per_second)


def row(world: Lifecycle, vol: SimVolume) -> dict[str, Any]:
    """A volume as ``show volumes`` lists it."""
    machine = world.machines[vol.machine_id]
    h = hardware(machine)
    used_by = users(world, vol)
    return {
        "id": vol.id,
        "cluster_id": None,
        "label": vol.name,
        "name": vol.name,
        "disk_space": vol.size,
        "status": "in_use" if used_by else "available",
        "type": "local_volume",
        "disk_name": h.disk_name,
        "driver_version": h.driver_version,
        "inet_up": machine.inet_up,
        "inet_down": machine.inet_down,
        "reliability2": machine.reliability,
        "start_date": world.wire.at(vol.created_at),
        "machine_id": machine.machine_id,
        "host_id": machine.host_id,
        "verification": "verified",
        "geolocation": machine.geolocation,
        "storage_cost": machine.storage_cost,
        "dph_total": round(machine.storage_cost * vol.size / HOURS_PER_MONTH, 6),
        "instances": used_by,
    }


def charge_item(world: Lifecycle, vol: SimVolume) -> dict[str, Any]:
    """One ``/charges`` result of type ``volume``."""
    start = world.wire.at(vol.created_at)
    end = world.wire.at(vol.ended_at if vol.ended_at is not None else world.now)
    amount = charges(world, vol)
    return {
        "type": "volume",
        "source": f"volume-{vol.id}",
        "description": f"{vol.size:g} GB volume {vol.name or vol.id} on machine {vol.machine_id}",
        "amount": amount,
        "start": start,
        "end": end,
        "day": end,
        "metadata": {"volume_id": vol.id},
        "items": [{"type": "storage", "source": "storage", "description": f"{vol.size:g} GB", "amount": amount,
                   "start": start, "end": end, "metadata": {}, "items": []}],
    }  # fmt: skip
