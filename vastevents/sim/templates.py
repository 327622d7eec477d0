"""Templates: a named image, docker options and onstart script an instance can be created from.

As on Vast, a template is found by its numeric ``id`` or its content ``hash_id``; an edit makes a new version
with a new hash, and the old hash keeps working for anyone already using it. Search shows the newest version
of the public templates and of the user's own. Creating an instance from one applies its image (with its tag),
docker options (variables, ports) and onstart; what the create request gives itself wins.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from vastevents.sim.model import SimError

OWN_CREATOR = 1  # the simulated user's id; built-in templates are Vast's (creator 0) and public

_CONTENT = ("name", "image", "tag", "env", "onstart", "runtype", "use_ssh", "ssh_direct", "jup_direct",
            "use_jupyter_lab", "jupyter_dir", "docker_login_repo", "extra_filters", "recommended_disk_space",
            "readme", "readme_visible", "desc", "href", "repo", "private")  # fmt: skip
_DEFAULTS: dict[str, Any] = {"runtype": "ssh", "use_ssh": True, "readme_visible": True, "private": True}


@dataclass
class SimTemplate:
    id: int
    hash_id: str
    name: str | None
    image: str
    tag: str | None = None
    env: str | None = None  # docker options: "-e A=1 -p 8888:8888"
    onstart: str | None = None
    runtype: str = "ssh"
    use_ssh: bool = True
    ssh_direct: bool = False
    jup_direct: bool = False
    use_jupyter_lab: bool = False
    jupyter_dir: str | None = None
    docker_login_repo: str | None = None
    extra_filters: dict[str, Any] = field(default_factory=dict)
    recommended_disk_space: float | None = None
    readme: str | None = None
    readme_visible: bool = True
    desc: str | None = None
    href: str | None = None
    repo: str | None = None
    private: bool = True
    creator_id: int = OWN_CREATOR
    created_at: float = 0.0
    count_created: int = 0
    recent_create_date: float | None = None
    latest: bool = True  # False once an edit made a newer version
    deleted: bool = False

    @property
    def full_image(self) -> str:
        return f"{self.image}:{self.tag}" if self.tag and ":" not in self.image.rsplit("/", 1)[-1] else self.image

    def row(self) -> dict[str, Any]:
        data = asdict(self)
        del data["latest"], data["deleted"]
        return {**data, "default_tag": self.tag, "recommended": self.creator_id != OWN_CREATOR}


BUILTIN = [
    SimTemplate(1, "", "PyTorch (Vast)", "pytorch/pytorch", "2.4.0-cuda12.4-cudnn9-runtime",
                env="-p 8888:8888", onstart="echo pytorch template ready", recommended_disk_space=32.0,
                private=False, creator_id=0, desc="PyTorch with CUDA"),
    SimTemplate(2, "", "NVIDIA CUDA", "nvidia/cuda", "12.4.1-devel-ubuntu22.04", recommended_disk_space=16.0,
                private=False, creator_id=0, desc="The CUDA toolkit on Ubuntu"),
    SimTemplate(3, "", "Ubuntu 22.04 VM-like", "ubuntu", "22.04", recommended_disk_space=10.0, private=False,
                creator_id=0, desc="A plain Ubuntu image"),
]  # fmt: skip


def _hash(fields: Mapping[str, Any], version: int) -> str:
    """A content hash like Vast's (32 hex digits), distinct per version of the same content."""
    text = json.dumps({**{k: fields.get(k) for k in _CONTENT}, "version": version}, sort_keys=True)
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """The template fields of a create/update body, checked; absent ones get Vast's defaults."""
    image = body.get("image")
    if not isinstance(image, str) or not image.strip():
        raise SimError(400, "invalid_args", "a template needs an image")
    values = {name: body.get(name, _DEFAULTS.get(name)) for name in _CONTENT}
    values["image"] = image.strip()
    disk = values["recommended_disk_space"]
    if disk not in (None, ""):
        try:
            values["recommended_disk_space"] = float(disk)
        except (TypeError, ValueError):
            raise SimError(400, "invalid_args", f"recommended_disk_space must be a number, got {disk!r}") from None
    else:
        values["recommended_disk_space"] = None
    if not isinstance(values["extra_filters"], dict):
        values["extra_filters"] = {}
    for flag in ("use_ssh", "ssh_direct", "jup_direct", "use_jupyter_lab", "readme_visible", "private"):
        values[flag] = bool(values[flag])
    values["runtype"] = str(values["runtype"] or "ssh")
    return values


class Templates:
    """Every version of every template, the built-in public ones first."""

    def __init__(self, versions: list[SimTemplate] | None = None, *, now: float = 0.0) -> None:
        if versions is None:
            versions = [replace(t, created_at=now, hash_id=_hash(asdict(t), 0)) for t in BUILTIN]
        self.versions = versions

    def to_list(self) -> list[dict[str, Any]]:
        return [asdict(t) for t in self.versions]

    @classmethod
    def from_list(cls, data: list[dict[str, Any]]) -> Templates:
        return cls([SimTemplate(**t) for t in data])

    def visible(self) -> list[SimTemplate]:
        """The newest version of each public template and of the user's own."""
        return [
            t for t in self.versions if t.latest and not t.deleted and (not t.private or t.creator_id == OWN_CREATOR)
        ]

    def create(self, body: Mapping[str, Any], *, now: float) -> SimTemplate:
        values = _fields(body)
        template_id = max((t.id for t in self.versions), default=0) + 1
        template = SimTemplate(id=template_id, hash_id=_hash(values, 0), created_at=now, **values)
        self.versions.append(template)
        return template

    def update(self, body: Mapping[str, Any], *, now: float) -> SimTemplate:
        """A new version of the user's template `id`/`hash_id` with a new hash; the old hash stays usable."""
        current = self.find(template_id=body.get("id"), hash_id=body.get("hash_id"), latest=True)
        if current.creator_id != OWN_CREATOR:
            raise SimError(403, "forbidden", f"Template {current.hash_id} is not yours to edit.")
        values = _fields(body)
        version = sum(t.id == current.id for t in self.versions)
        current.latest = False
        template = replace(current, hash_id=_hash(values, version), latest=True, created_at=now, **values)
        self.versions.append(template)
        return template

    def delete(self, *, template_id: Any = None, hash_id: Any = None) -> SimTemplate:
        template = self.find(template_id=template_id, hash_id=hash_id, latest=hash_id is None)
        if template.creator_id != OWN_CREATOR:
            raise SimError(403, "forbidden", f"Template {template.hash_id} is not yours to delete.")
        for version in self.versions:
            if version.id == template.id:
                version.deleted = True
        return template

    def find(self, *, template_id: Any = None, hash_id: Any = None, latest: bool = False) -> SimTemplate:
        """A template by hash (any version) or id (the newest); deleted ones are gone."""
        for t in reversed(self.versions):
            if t.deleted:
                continue
            if hash_id is not None and t.hash_id == str(hash_id):
                return t
            if hash_id is None and template_id is not None and str(t.id) == str(template_id) and t.latest:
                return t
        what = f"hash {hash_id}" if hash_id is not None else f"id {template_id}"
        raise SimError(404, "no_such_template", f"No template with {what}.")

    def for_create(self, body: Mapping[str, Any], *, now: float) -> SimTemplate | None:
        """The template a create names (``template_hash_id`` or ``template_id``), counted as used; None if none."""
        hash_id, template_id = body.get("template_hash_id"), body.get("template_id")
        if not hash_id and template_id in (None, ""):
            return None
        template = self.find(template_id=template_id, hash_id=hash_id or None)
        template.count_created += 1
        template.recent_create_date = now
        return template
