"""A job's spec: what to rent, what to upload and run there, what to bring back. TOML file and/or flags.

    image = "pytorch/pytorch:2.3.1-cuda12.1-cudnn8-runtime"
    query = "gpu_ram>=24 num_gpus=1 reliability>0.9 disk_space>=64"
    interruptible = true          # a bid (min_bid, or more where outbids cost more); false: on-demand; unset: cheaper
    upload = "./train"            # becomes the remote workdir
    cmd = "python train.py"
    download = ["out", "metrics.json"]
    max_duration = "2h"
    checkpoint_dir = "ckpt"
    [preflight]
    cuda = 12.1
    imports = ["torch"]
    [volume]                      # checkpoint_dir on a volume that outlives the instance (see JobVolume)
    mount_path = "/root/ckpt"
    size = 20

Validated by pydantic; errors name the key (and the file line when it came from a file).
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vastevents import jobvolumes
from vastevents.choosing import Kind, Ranking, Strategy, Workload, rank
from vastevents.config import parse_duration
from vastevents.errors import ConfigError, VastEventsError
from vastevents.jobvolumes import remote_path
from vastevents.models import Rental, VolumeMount
from vastevents.query import parse_query
from vastevents.store.history import HostHistory
from vastevents.store.hosts import Hosts

if TYPE_CHECKING:
    from datetime import datetime

    from vastevents.context import Context
    from vastevents.models import Offer, Volume
    from vastevents.ports import VastApi
    from vastevents.store import Store

DEFAULT_QUERY = "gpu_ram>=24 num_gpus=1 reliability>0.9 disk_space>=64"


class Preflight(BaseModel):
    """Checks before the command runs: a GPU visible to ``nvidia-smi``, a minimum CUDA, importable packages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu: bool = True
    cuda: float | None = None
    imports: tuple[str, ...] = ()

    @field_validator("imports")
    @classmethod
    def _modules(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not all(part.isidentifier() for part in name.split(".")):
                raise ValueError(f"{name!r} is not a module name")
        return value


class JobVolume(BaseModel):
    """A volume for the job: made with its instance (`size` GB on the rented machine, named with the job's label,
    deleted when the job ends unless `keep`) or an existing one linked by `id` (the job then runs on the volume's
    machine, and the volume is never deleted). The instance sees it at `mount_path`; a ``checkpoint_dir`` lives on
    it, so a replacement on the same machine finds the checkpoints where they were."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mount_path: str
    size: float | None = Field(None, gt=0)
    id: int | None = Field(None, ge=0)
    keep: bool = False

    @field_validator("mount_path")
    @classmethod
    def _mount(cls, value: str) -> str:
        parts = value.strip("/").split("/")
        if not value.startswith("/") or value.rstrip("/") in ("", "/root") or ".." in parts:
            raise ValueError(f"{value!r} must be an absolute path (below /root, the container's home), without '..'")
        return value.rstrip("/")

    @property
    def remote_path(self) -> str:
        """`mount_path` for a remote shell, quoted: below ``/root`` it is spelled from ``$HOME`` (the container's
        home is ``/root``; a simulated host's is its own directory)."""
        return remote_path(self.mount_path)

    @model_validator(mode="after")
    def _one(self) -> JobVolume:
        if (self.size is None) == (self.id is None):
            raise ValueError("give either size (a new volume) or id (an existing one)")
        return self


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str | None = None
    template_hash: str | None = None
    template_id: int | None = Field(None, ge=0)
    """A template (its newest version) gives the image, env and onstart the spec leaves out."""
    login_env: str | None = None
    """The environment variable holding a private image's registry login (``-u USER -p TOKEN REGISTRY``), read by
    the machine that rents; the login itself is never stored."""
    onstart: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    disk: float = Field(64.0, gt=0)
    query: str = DEFAULT_QUERY
    bid: float | None = Field(None, gt=0)
    interruptible: bool | None = None
    """True: rent interruptible (a bid); False: on-demand; None: whichever is expected to cost less (or a bid when
    `bid` fixes the price)."""
    upload: Path | None = None
    cmd: str
    download: tuple[str, ...] = ()
    download_gb: float = Field(0.0, ge=0)
    """Roughly what the downloads weigh, for the expected cost of bringing them back (``inet_up_cost``)."""
    out: Path = Path("results")
    workdir: str = "job"
    max_duration: float | None = None
    max_dph: float | None = Field(None, gt=0)
    max_cost: float | None = Field(None, gt=0)
    checkpoint_dir: str | None = None
    checkpoint_every: float = 600.0
    max_offers: int = Field(3, ge=1)
    ssh_user: str = "root"
    preflight: Preflight = Field(default_factory=Preflight)
    volume: JobVolume | None = None
    on_disk_full: Literal["fail", "grow"] = "fail"
    """When the command fails with its disk full: fail (cause ``disk_full``), or rerun from the checkpoint on an
    offer with twice the disk, up to `max_disk`."""
    max_disk: float | None = Field(None, gt=0)
    """The most disk (GB) ``grow`` may rent; unset: four times `disk`."""

    @field_validator("login_env")
    @classmethod
    def _variable(cls, value: str | None) -> str | None:
        if value is not None and not value.isidentifier():
            raise ValueError(f"{value!r} is not an environment variable name")
        return value

    @field_validator("max_duration", "checkpoint_every", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    @field_validator("download")
    @classmethod
    def _relative(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for path in value:
            if path.startswith("/") or ".." in Path(path).parts:
                raise ValueError(f"{path!r} must be relative to the workdir, without '..'")
        return value

    @model_validator(mode="after")
    def _image(self) -> JobSpec:
        if not self.image and not self.template_hash and self.template_id is None:
            raise ValueError("needs an image (or a template: template_hash, template_id)")
        return self

    def grown(self, full: float | None = None) -> JobSpec | None:
        """This spec with twice the disk that filled up (`full` GB, the spec's own when unknown), for a rerun;
        None when `on_disk_full` is not ``grow`` or that is over `max_disk` (which the grown spec keeps, so it
        bounds every rerun). Growing from the full disk, not the spec, grows once however often it is asked."""
        bound = self.max_disk if self.max_disk is not None else 4 * self.disk
        disk = 2 * (full or self.disk)
        if self.on_disk_full != "grow" or disk > bound:
            return None
        return self.model_copy(update={"disk": disk, "max_disk": bound})

    def image_login(self) -> str | None:
        """The registry login from the environment variable `login_env` names (None without one)."""
        if self.login_env is None:
            return None
        login = os.environ.get(self.login_env)
        if not login:
            raise ConfigError(f"login_env names {self.login_env}, which is not set: export the registry login there")
        return login

    def rental(self, ask: int, *, label: str, price: float | None, volume: VolumeMount | None = None) -> Rental:
        """The create request for renting offer `ask` (its template, registry login and volume)."""
        return Rental(
            ask,
            image=self.image,
            disk=self.disk,
            label=label,
            price=price,
            env=self.env,
            onstart=self.onstart,
            template_hash=self.template_hash,
            template_id=self.template_id,
            image_login=self.image_login(),
            volume=volume,
        )

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    async def offers(
        self, client: VastApi, *, blocked: tuple[Iterable[int], Iterable[int]] = ((), ()), limit: int = 20
    ) -> list[Offer]:
        """The offers this job may rent, cheapest first: interruptible when the job says so, else on-demand (whose
        rows carry ``min_bid`` too); at most ``max_dph``; none on a `blocked` (machine ids, host ids) host. Prices
        include the job's disk."""
        machines, hosts = set(blocked[0]), set(blocked[1])
        kind = "bid" if self.bid is not None or self.interruptible else "on-demand"
        query = {**parse_query(self.query), "allocated_storage": self.disk}
        space = dict(query.get("disk_space") or {})
        if float(space.get("gte", 0)) < self.disk:  # a machine with less disk cannot take the job (nor its rerun)
            query["disk_space"] = {**space, "gte": self.disk}
        if self.volume is not None and self.volume.id is not None:  # a linked volume is used where it lives
            query["machine_id"] = {"eq": await self._volume_machine(client, self.volume.id)}
        found = await client.search_offers(query, type=kind, limit=limit, order=[["dph_total", "asc"]])
        return [
            offer
            for offer in found
            if (self.max_dph is None or (offer.dph_total or 0.0) <= self.max_dph)
            and offer.machine_id not in machines
            and offer.host_id not in hosts
        ]

    async def volume_mount(self, client: VastApi, label: str, ask: int) -> VolumeMount | None:
        """The volume to rent offer `ask` with: a new one on its machine named `label`, or the linked one."""
        return await jobvolumes.mount_for(client, self, label, ask)

    async def release_volumes(
        self, ctx: Context, label: str, *, ending: bool = True, volumes: Sequence[Volume] | None = None
    ) -> list[int]:
        """Delete the unused volumes this job (labelled `label`) made, among `volumes` (None: the account's now);
        at its end only unless `keep`."""
        return await jobvolumes.release(ctx, self, label, ending=ending, volumes=volumes)

    async def refusal(self, client: VastApi) -> str | None:
        """Why no offer can be rented for this spec whatever the market (None when it can): its registry login's
        variable is not set, or the volume it links is not on the account."""
        try:
            self.image_login()
            if self.volume is not None and self.volume.id is not None:
                await self._volume_machine(client, self.volume.id)
        except VastEventsError as exc:
            return str(exc)
        return None

    @staticmethod
    async def _volume_machine(client: VastApi, volume_id: int) -> int:
        found = next((v for v in await client.list_volumes() if v.id == volume_id), None)
        if found is None or found.machine_id is None:
            raise VastEventsError(f"volume {volume_id} is not on the account (vastevents volumes lists them)")
        return found.machine_id

    async def choose(
        self, client: VastApi, store: Store, *, now: datetime, strategy: Strategy, avoid: Iterable[int] = ()
    ) -> Ranking:
        """The matching offers (none on a blocked host, nor on the machines to `avoid`) in the order `strategy`
        would rent them, each with its terms (bid or on-demand) and expected cost from our host history; none
        whose price under those terms is over ``max_dph``."""
        machines, hosts = store.repository(Hosts).blocked(now)
        found = await self.offers(client, blocked=([*machines, *avoid], hosts))
        history = store.repository(HostHistory).stats(store.journal, now)
        ranking = rank(found, self.workload(), history, strategy=strategy)
        if self.max_dph is None:
            return ranking
        return Ranking(ranking.strategy, tuple(e for e in ranking.estimates if e.dph <= self.max_dph))

    def workload(self) -> Workload:
        """The job as the expected-cost model sees it."""
        kind = None if self.interruptible is None and self.bid is None else Kind.BID
        if self.interruptible is False and self.bid is None:
            kind = Kind.ON_DEMAND
        upload = 0
        if self.upload is not None and self.upload.is_dir():
            upload = sum(f.stat().st_size for f in self.upload.rglob("*") if f.is_file() and not f.is_symlink())
        made = self.volume.size if self.volume is not None and self.volume.size else 0.0  # bills as disk does
        return Workload(
            seconds=self.hours * 3600.0,
            disk_gb=self.disk + made,
            checkpoint_every=self.checkpoint_every if self.checkpoint_dir else None,
            upload_gb=upload / 1e9,
            download_gb=self.download_gb,
            kind=kind,
            bid=self.bid,
        )

    @property
    def log_path(self) -> str:
        """The command's log on the host (``<workdir>/.vastevents/job.log``)."""
        return f"{self.workdir}/.vastevents/job.log"

    @property
    def hours(self) -> float:
        """What an estimate counts on: ``max_duration``, an hour when unset."""
        return (self.max_duration or 3600.0) / 3600.0

    def estimate(self, offer: Offer) -> float:
        """Dollars for :attr:`hours` on `offer`."""
        return (offer.dph_total or 0.0) * self.hours


def load_spec(path: Path | None, overrides: dict[str, Any]) -> JobSpec:
    """The spec from `path` (TOML) with `overrides` (flags given, None meaning not given) on top."""
    data: dict[str, Any] = {}
    text = ""
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
            data = tomllib.loads(text)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the job spec: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        base = path.parent
        for key in ("upload", "out"):
            if isinstance(data.get(key), str):
                data[key] = str((base / data[key]).expanduser())
    data.update({key: value for key, value in overrides.items() if value not in (None, (), [])})
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, text)) from None


def pack_dir(path: Path) -> bytes:
    """`path`'s contents as a gzipped tar (names relative to it), for a job submitted to another machine."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for child in sorted(path.iterdir()):
            archive.add(child, arcname=child.name)
    return buffer.getvalue()


def unpack_dir(archive: bytes, dest: Path) -> None:
    """Extract a :func:`pack_dir` archive into `dest` (made whole or not at all; ``filter="data"`` refuses
    absolute names, ``..`` and device files)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            tar.extractall(staging, filter="data")
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _describe(exc: ValidationError, path: Path | None, text: str) -> str:
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"]) or "spec"
    where = f"{path}: " if path is not None else ""
    line = next((n for n, row in enumerate(text.splitlines(), 1) if row.strip().startswith(key.split(".")[-1])), None)
    at = f" (line {line})" if line is not None and key != "spec" else ""
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}job spec key {key!r}{at}: {message}" if key != "spec" else f"{where}job spec: {message}"
