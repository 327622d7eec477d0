"""The market: machines generated from a seed or given by a scenario, and the offer rows their asks show."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

from vastevents.sim.hardware import hardware
from vastevents.sim.model import Ask, Machine
from vastevents.sim.wiretime import WireTime

HOURS_PER_MONTH = 720.0

# (name, GB of VRAM per GPU, on-demand $/h per GPU, max CUDA)
_GPUS = [
    ("RTX 3060", 12, 0.08, 12.2),
    ("RTX 3090", 24, 0.22, 12.2),
    ("RTX 4090", 24, 0.40, 12.4),
    ("RTX A6000", 48, 0.55, 12.2),
    ("L40S", 48, 0.85, 12.4),
    ("A100 SXM4", 80, 1.20, 12.4),
    ("H100 SXM", 80, 2.40, 12.6),
]
_GEOS = ["Texas, US", "Quebec, CA", "Bavaria, DE", "Stockholm, SE", "Taipei, TW", "Ile-de-France, FR", "Tokyo, JP"]


FLAKY_KINDS = ("slow_ssh", "no_ssh", "outbids", "broken_gpu")
"""How a flaky machine misbehaves: SSH answers only minutes after running, or never; a bid there is outbid every
few minutes; its GPUs are not visible (nvidia-smi fails)."""
SLOW_SSH_S = 480.0
FLAKY_OUTBID_EVERY_S = 600.0
MARKET_OUTBID_EVERY_S = 6 * 3600.0
"""In a market with flaky machines, every machine sees a competing bid this often on average, priced anywhere
between its minimum bid and its on-demand price: a bid at the floor is outbid by every one, a bid near the
on-demand price by few."""


def generate_machines(*, seed: int, hosts: int, origin: float, flaky: float = 0.0) -> list[Machine]:
    """A deterministic market of `hosts` hosts (one or two machines each) from `seed`; with a `flaky` share, that
    share of each GPU model's machines misbehaves, all in its cheaper half (see :func:`make_flaky`)."""
    machines = _generate(seed=seed, hosts=hosts, origin=origin)
    return make_flaky(machines, seed=seed, share=flaky) if flaky > 0 else machines


def make_flaky(machines: list[Machine], *, seed: int, share: float) -> list[Machine]:
    """Mark `share` of each GPU model's machines as flaky, all of them in its cheaper half (the cheapest offers are
    where they hide), a misbehaviour of :data:`FLAKY_KINDS` each in turn; and let bids compete on every machine.

    Drawn from a generator of its own, so the machines a seed makes are the same with or without flaky ones.
    """
    rng = random.Random(f"flaky:{seed}")
    kinds = list(FLAKY_KINDS)
    rng.shuffle(kinds)
    chosen = 0
    by_model: dict[str, list[Machine]] = {}
    for machine in machines:
        machine.outbid_every_s = MARKET_OUTBID_EVERY_S
        by_model.setdefault(machine.gpu_name, []).append(machine)
    for model in sorted(by_model):
        ranked = sorted(by_model[model], key=lambda m: (m.dph_per_gpu, m.machine_id))
        cheaper = ranked[: (len(ranked) + 1) // 2]
        for machine in sorted(rng.sample(cheaper, min(len(cheaper), round(share * len(ranked)))),
                              key=lambda m: m.machine_id):  # fmt: skip
            machine.flaky = kinds[chosen % len(kinds)]
            chosen += 1
            if machine.flaky == "slow_ssh":
                machine.ssh_delay_s = SLOW_SSH_S
            elif machine.flaky == "no_ssh":
                machine.ssh_delay_s = None
            elif machine.flaky == "outbids":
                machine.outbid_every_s = FLAKY_OUTBID_EVERY_S
            else:
                machine.gpu_broken = True
    return machines


def _generate(*, seed: int, hosts: int, origin: float) -> list[Machine]:
    rng = random.Random(seed)
    machines = []
    machine_id = 10_000
    for host_index in range(hosts):
        host_id = 100_000 + host_index * 7
        for _ in range(rng.choice((1, 1, 2))):
            machine_id += rng.randint(1, 40)
            name, vram, price, cuda = rng.choice(_GPUS)
            num_gpus = rng.choice((1, 1, 2, 4, 8))
            dph = round(price * rng.uniform(0.8, 1.3), 3)
            machines.append(
                Machine(
                    machine_id=machine_id,
                    host_id=host_id,
                    gpu_name=name,
                    num_gpus=num_gpus,
                    gpu_ram=vram * 1024.0,
                    cpu_cores=num_gpus * rng.choice((4, 8, 16)),
                    cpu_ram=num_gpus * rng.choice((32, 64)) * 1024.0,
                    disk_space=float(rng.choice((200, 500, 1000, 2000))),
                    dph_per_gpu=dph,
                    storage_cost=round(rng.uniform(0.05, 0.25), 3),
                    min_bid_per_gpu=round(dph * rng.uniform(0.35, 0.6), 3),
                    reliability=round(rng.uniform(0.9, 0.999), 4),
                    geolocation=rng.choice(_GEOS),
                    cuda_max_good=cuda,
                    inet_down=float(rng.choice((100, 500, 1000, 5000))),
                    inet_up=float(rng.choice((100, 500, 1000))),
                    end_date=origin + 86400.0 * rng.randint(7, 90),
                )
            )
    return machines


def machines_from_specs(specs: Sequence[Mapping[str, Any]], *, origin: float) -> list[Machine]:
    """Machines from explicit specs (scenario files); missing fields get plain defaults.

    Raises ValueError naming the machine (1-based) and the field that is wrong.
    """
    machines = []
    for index, spec in enumerate(specs):
        try:
            machines.append(_machine_from_spec(index, dict(spec), origin))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"machine {index + 1}: {exc}") from None
    return machines


def _machine_from_spec(index: int, spec: dict[str, Any], origin: float) -> Machine:
    days = float(spec.pop("days", 30))
    gpu_ram_gb = float(spec.pop("gpu_ram_gb", 24))
    num_gpus = int(spec.pop("num_gpus", 1))
    dph = float(spec.pop("dph_per_gpu", 0.4))
    defaults: dict[str, Any] = {
        "machine_id": 20_000 + index,
        "host_id": 200_000 + index,
        "gpu_name": "RTX 4090",
        "num_gpus": num_gpus,
        "gpu_ram": gpu_ram_gb * 1024.0,
        "cpu_cores": 8 * num_gpus,
        "cpu_ram": 32768.0 * num_gpus,
        "disk_space": 500.0,
        "dph_per_gpu": dph,
        "storage_cost": 0.1,
        "min_bid_per_gpu": round(dph / 2, 3),
        "reliability": 0.99,
        "geolocation": "Texas, US",
        "cuda_max_good": 12.4,
        "inet_down": 1000.0,
        "inet_up": 500.0,
        "end_date": origin + days * 86400.0,
    }
    unknown = sorted(set(spec) - {f.name for f in fields(Machine)})
    if unknown:
        known = ", ".join(sorted({*defaults, "days", "gpu_ram_gb"}))
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; known: {known}")
    return Machine(**{**defaults, **spec})


def offer_row(
    m: Machine, ask: Ask, *, now: float, wire: WireTime, bid: bool = False, storage_gb: float = 5.0
) -> dict[str, Any]:
    """The search answer for one ask, as Vast shows an offer (bid offers are priced at the minimum bid)."""
    n = ask.num_gpus
    base = round((m.min_bid_per_gpu if bid else m.dph_per_gpu) * n, 4)
    storage_ph = m.storage_cost * storage_gb / HOURS_PER_MONTH
    dph_total = round(base + storage_ph, 6)
    total_flops = round(n * m.gpu_ram / 1024.0, 1)
    dlperf = round(n * m.gpu_ram / 1024.0 * m.reliability, 2)
    return {
        **hardware(m).fields(),
        "id": ask.id,
        "ask_contract_id": ask.id,
        "bundle_id": ask.id,
        "machine_id": m.machine_id,
        "host_id": m.host_id,
        "cluster_id": None,
        "gpu_name": m.gpu_name,
        "num_gpus": n,
        "gpu_frac": n / m.num_gpus,
        "gpu_ram": m.gpu_ram,
        "gpu_total_ram": m.gpu_ram * n,
        "cpu_cores": m.cpu_cores * n // m.num_gpus,
        "cpu_cores_effective": float(m.cpu_cores * n // m.num_gpus),
        "cpu_ram": m.cpu_ram * n / m.num_gpus,
        "disk_space": round(m.disk_space * n / m.num_gpus, 1),
        "dph_base": base,
        "dph_total": dph_total,
        "storage_cost": m.storage_cost,
        "min_bid": round(m.min_bid_per_gpu * n, 4),
        "reliability": m.reliability,
        "reliability2": m.reliability,
        "cuda_max_good": m.cuda_max_good,
        "inet_down": m.inet_down,
        "inet_up": m.inet_up,
        "geolocation": m.geolocation,
        "verification": "verified",
        "verified": True,
        "external": False,
        "rentable": True,
        "rented": False,
        "is_bid": bid,
        "end_date": wire.at(m.end_date),
        "duration": wire.span(m.end_date - now),
        "total_flops": total_flops,
        "dlperf": dlperf,
        "dlperf_per_dphtotal": round(dlperf / max(dph_total, 0.0001), 3),
        "flops_per_dphtotal": round(total_flops / max(dph_total, 0.0001), 3),
        "score": round(n * m.gpu_ram / 1024.0 * m.reliability / max(base, 0.01), 3),
        "direct_port_count": 100,
        "static_ip": True,
        "datacenter": False,
        "hosting_type": 0,
        "public_ipaddr": "127.0.0.1",
    }


_SAMPLE = Machine(0, 0, "RTX 4090", 1, 24576.0, 8, 32768.0, 500.0, 0.4, 0.1, 0.2, 0.99, "Texas, US", 12.4, 1000.0,
                  500.0, 0.0)  # fmt: skip
OFFER_FIELDS = frozenset(offer_row(_SAMPLE, Ask(0, 0, 1), now=0.0, wire=WireTime()))
"""Every field an offer row has: a search filter on any other field is refused, as Vast refuses it."""
