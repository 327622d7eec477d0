"""Building the edges from configuration: the Vast client (the one place that finds the API key, or says there is
none) and the store ``[store]`` names. The runtime builds its own this way; so does a command's one-off request.
"""

from __future__ import annotations

from typing import Any

from vastevents.config import NO_API_KEY, Config, find_api_key
from vastevents.errors import ConfigError
from vastevents.store import SqlStore, open_store
from vastevents.vast import VastClient


def vast_client(config: Config, api_key: str | None = None, *, key_required: bool = True, **tuning: Any) -> VastClient:
    """A client of the configured Vast API with `api_key`, else the user's; the one place that says there is none.

    Without `key_required`, a user without a key gets a client without one (an offer search needs none).
    `tuning`: VastClient's retry and timeout options (a person waiting at a terminal wants few, short retries).
    """
    if api_key is None:
        found = find_api_key()
        if found is None and key_required:
            raise ConfigError(NO_API_KEY)
        api_key = found[0] if found is not None else None
    return VastClient(api_key, config.vast.url, **tuning)


def configured_store(config: Config, *, read_only: bool = False) -> SqlStore:
    """The store ``[store]`` names (the team's PostgreSQL one, or the SQLite file); `read_only` to only look."""
    return open_store(config.store.resolved_path(), config.store.resolved_url(), read_only=read_only)
