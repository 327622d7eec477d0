"""The wire shapes of an instance: its row in instance lists and its item in ``/charges``."""

from __future__ import annotations

from typing import Any

from vastevents.sim.billing import Charges, gpu_rate, storage_rate
from vastevents.sim.model import Machine, SimInstance
from vastevents.sim.params import exposed_ports
from vastevents.sim.wiretime import WireTime


def instance_row(m: Machine, inst: SimInstance, *, now: float, wire: WireTime, ssh_host: str) -> dict[str, Any]:
    base = round(gpu_rate(m, inst), 6)
    storage_ph = storage_rate(m, inst)
    # Vast's wire shape: each exposed container port on a host port of the instance's direct range.
    extra = [port for port in exposed_ports(inst.env) if port != "22/tcp"]
    ports = {
        container_port: [{"HostIp": "0.0.0.0", "HostPort": str(inst.ssh_port + offset)}]  # noqa: S104
        for offset, container_port in enumerate(["22/tcp", *extra])
    }
    return {
        "id": inst.id,
        "actual_status": inst.actual_status,
        "intended_status": inst.intended_status,
        "cur_state": inst.cur_state,
        "next_state": inst.next_state,
        "status_msg": inst.status_msg,
        "label": inst.label,
        "machine_id": m.machine_id,
        "host_id": m.host_id,
        "gpu_name": m.gpu_name,
        "num_gpus": inst.num_gpus,
        "gpu_ram": m.gpu_ram,
        "gpu_totalram": m.gpu_ram * inst.num_gpus,
        "gpu_util": inst.gpu_util,
        "gpu_temp": 55.0 if inst.actual_status == "running" else 0.0,
        "cpu_cores": m.cpu_cores * inst.num_gpus // m.num_gpus,
        "cpu_ram": m.cpu_ram * inst.num_gpus / m.num_gpus,
        "disk_space": inst.disk,
        "disk_util": inst.disk_util,
        "dph_base": base,
        "dph_total": round(base + storage_ph, 6),
        "storage_cost": m.storage_cost,
        "storage_total_cost": round(storage_ph, 6),
        "is_bid": inst.is_bid,
        "min_bid": round(m.min_bid_per_gpu * inst.num_gpus, 4),
        "ssh_host": ssh_host,
        "ssh_port": inst.ssh_port,
        "ssh_idx": "1",
        "public_ipaddr": ssh_host,
        "ports": ports,
        "direct_port_start": inst.ssh_port,
        "direct_port_end": inst.ssh_port + len(ports) - 1,
        "start_date": wire.at(inst.created_at),
        "end_date": wire.at(inst.end_date),
        "duration": wire.span(inst.end_date - now),
        "extra_env": [[k, v] for k, v in inst.env.items()],
        "image_uuid": inst.image,
        "image_runtype": inst.runtype,
        "onstart": inst.onstart,
        "reliability2": m.reliability,
        "geolocation": m.geolocation,
        "cuda_max_good": m.cuda_max_good,
        "inet_down": m.inet_down,
        "inet_up": m.inet_up,
        "verification": "verified",
        "template_id": inst.template_id,
        "template_hash_id": inst.template_hash_id,
        "template_name": inst.template_name,
        "uptime_mins": None,
    }


def charge_item(inst: SimInstance, charged: Charges, *, now: float, wire: WireTime) -> dict[str, Any]:
    """One ``/charges`` result: the instance's total with its gpu and storage parts."""
    gpu, storage = charged.gpu, charged.storage
    start = wire.at(inst.created_at)
    end = wire.at(inst.ended_at if inst.ended_at is not None else now)
    return {
        "type": "instance",
        "source": f"instance-{inst.id}",
        "description": f"{inst.label or 'instance'} on machine {inst.machine_id}",
        "amount": gpu + storage,
        "start": start,
        "end": end,
        "day": end,
        "metadata": {"instance_id": inst.id},
        "items": [
            {"type": "gpu", "source": "gpu", "description": "GPU time while running", "amount": gpu,
             "start": start, "end": end, "metadata": {}, "items": []},
            {"type": "storage", "source": "storage", "description": f"{inst.disk} GB disk, stopped too",
             "amount": storage, "start": start, "end": end, "metadata": {}, "items": []},
        ],
    }  # fmt: skip
