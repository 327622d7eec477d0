"""The labels new jobs get: who rented an instance shows in its label, and every label stays an owned one.

With ``[vast] label_prefix`` set in the config, a job is labelled ``<label_prefix>:job-<id>`` as always. Without it
(the key absent, whatever its default), the account names the jobs it rents, in the provider runbook's order: its
nickname, else the local part of its email, else ``vast-user`` — ``vastevents-alice:job-12``. The default prefix
``vastevents`` stays first, so ownership (a label starting with ``label_prefix``) is exactly what it was: the
instances of earlier jobs stay owned, and nothing a person labelled by hand becomes owned.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from vastevents.errors import VastEventsError

if TYPE_CHECKING:
    from vastevents.config import Config
    from vastevents.ports import VastApi

log = logging.getLogger(__name__)

FALLBACK_NAME = "vast-user"
_UNSAFE = re.compile(r"[^a-z0-9._-]+")


def account_name(account: Mapping[str, Any]) -> str:
    """Who the account is, for labels: its nickname (``username``), else its email's local part, else
    ``vast-user``; lower case, letters, digits, ``.``, ``_`` and ``-`` only (never the ``:`` labels split on)."""
    email = str(account.get("email") or "")
    for raw in (account.get("nickname"), account.get("username"), email.partition("@")[0]):
        name = _UNSAFE.sub("-", str(raw or "").strip().lower()).strip("-._")[:32]
        if name:
            return name
    return FALLBACK_NAME


def prefix_configured(config: Config) -> bool:
    """True when the config file sets ``[vast] label_prefix`` (the default alone does not count)."""
    return "label_prefix" in config.vast.model_fields_set


async def job_label_prefix(config: Config, client: VastApi | None) -> str:
    """The prefix of a new job's label: the configured ``label_prefix``, else ``<label_prefix>-<account name>``
    (``vast-user`` when the account cannot be read, e.g. where no API key is set)."""
    prefix = config.vast.label_prefix
    if prefix_configured(config):
        return prefix
    account: Mapping[str, Any] = {}
    if client is not None:
        try:
            account = await client.current_user()
        except VastEventsError as exc:
            log.warning("cannot read the account to name the job's label (%s); using %r", exc, FALLBACK_NAME)
    return f"{prefix}-{account_name(account)}"
