"""What a simulated machine is built from, beyond what the market prices: the fields Vast's offers document.

Derived, never drawn from the market's random stream: the GPU model decides its architecture, memory bandwidth
and power, and a generator seeded by the machine id the rest (CPU, PCIe, disk, network prices), so adding a
field here never changes which machines a seed generates.
"""

from __future__ import annotations

import functools
import random
from dataclasses import asdict, dataclass
from typing import Any

from vastevents.sim.model import Machine


@dataclass(frozen=True)
class GpuModel:
    compute_cap: int  # CUDA compute capability x 100
    mem_bw: float  # GB/s
    max_power: float  # W
    nvlink_bw: float = 0.0  # GB/s between the GPUs of one machine (SXM boards only)


GPU_MODELS: dict[str, GpuModel] = {
    "RTX 3060": GpuModel(860, 360.0, 170.0),
    "RTX 3090": GpuModel(860, 936.2, 350.0),
    "RTX 4090": GpuModel(890, 1008.0, 450.0),
    "RTX A6000": GpuModel(860, 768.0, 300.0),
    "L40S": GpuModel(890, 864.0, 350.0),
    "A100 SXM4": GpuModel(800, 2039.0, 400.0, nvlink_bw=600.0),
    "H100 SXM": GpuModel(900, 3352.0, 700.0, nvlink_bw=900.0),
}
_UNKNOWN_GPU = GpuModel(860, 900.0, 300.0)

_CPUS = [("AMD EPYC 7543 32-Core Processor", 2.8), ("AMD Ryzen 9 7950X 16-Core Processor", 4.5),
         ("Intel Xeon Gold 6338 CPU", 2.0), ("AMD EPYC 9354 32-Core Processor", 3.25),
         ("Intel Core i9-13900K", 3.0)]  # fmt: skip
_DISKS = ["Samsung SSD 990 PRO 2TB", "WD_BLACK SN850X 4000GB", "KIOXIA KCD8XPUG3T84", "Micron 7450 MTFDKCC3T8TFR"]
_BOARDS = ["ROMED8-2T", "ProArt X670E-CREATOR WIFI", "X12DPi-NT6", "H13SSL-N", "Z790 AORUS ELITE AX"]


@dataclass(frozen=True)
class Hardware:
    """The per-machine fields of an offer (names as Vast's search documents them)."""

    cpu_name: str
    cpu_ghz: float
    cpu_arch: str
    has_avx: int
    mobo_name: str
    pci_gen: float
    pcie_bw: float  # GB/s, CPU to GPU
    disk_name: str
    disk_bw: float  # MB/s
    gpu_arch: str
    gpu_mem_bw: float
    gpu_max_power: float
    gpu_max_temp: float
    gpu_display_active: bool
    bw_nvlink: float
    compute_cap: int
    inet_up_cost: float  # $/GB
    inet_down_cost: float  # $/GB
    ubuntu_version: str
    driver_version: str
    vms_enabled: bool

    def fields(self) -> dict[str, Any]:
        return asdict(self)


def hardware(machine: Machine) -> Hardware:
    return _hardware(machine.machine_id, machine.gpu_name, machine.num_gpus)


@functools.lru_cache(maxsize=4096)
def _hardware(machine_id: int, gpu_name: str, num_gpus: int) -> Hardware:
    rng = random.Random(machine_id)
    gpu = GPU_MODELS.get(gpu_name, _UNKNOWN_GPU)
    cpu_name, cpu_ghz = rng.choice(_CPUS)
    pci_gen = rng.choice((3.0, 4.0, 4.0, 5.0))
    return Hardware(
        cpu_name=cpu_name,
        cpu_ghz=cpu_ghz,
        cpu_arch="amd64",
        has_avx=1,
        mobo_name=rng.choice(_BOARDS),
        pci_gen=pci_gen,
        pcie_bw=round(2 ** (pci_gen - 3.0) * 12.0 * rng.uniform(0.85, 1.0), 1),
        disk_name=rng.choice(_DISKS),
        disk_bw=float(rng.choice((1500, 2800, 3500, 6000))),
        gpu_arch="nvidia",
        gpu_mem_bw=gpu.mem_bw,
        gpu_max_power=gpu.max_power,
        gpu_max_temp=83.0,
        gpu_display_active=False,
        bw_nvlink=gpu.nvlink_bw if num_gpus > 1 else 0.0,
        compute_cap=gpu.compute_cap,
        inet_up_cost=round(rng.choice((0.0, 0.002, 0.005, 0.01)), 4),
        inet_down_cost=round(rng.choice((0.0, 0.001, 0.003, 0.005)), 4),
        ubuntu_version=rng.choice(("20.04", "22.04", "22.04", "24.04")),
        driver_version="550.54.14",
        vms_enabled=False,
    )
