"""Async client for the Vast.ai REST API: the one edge where vastevents talks to Vast.

Retries live here and only here: 429/502/503/504 and connection errors are retried with exponential
backoff and jitter, honouring ``Retry-After`` (up to ``max_wait``, 60 s by default), for a bounded number of
attempts (``max_attempts``; interactive commands use fewer and shorter waits than the watcher). Creating an
instance spends money, so it is resent only when the server certainly did nothing (a 429, or a connection
that never opened); any other unclear outcome raises :class:`AmbiguousCreate` so the caller reconciles by
label. The API key goes only into the ``Authorization`` header: never into a URL, a message or a log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential

from vastevents._logging import REDACTED, redact, register_secret
from vastevents.errors import AmbiguousCreate, ApiError, AuthError, NoSuchAsk, NotFound, RateLimited
from vastevents.models import Instance, Offer, Rental, Volume
from vastevents.query import parse_query

log = logging.getLogger("vastevents.vast")

MAX_RETRY_AFTER = 60.0
"""The default cap on one wait before a retry, ``Retry-After`` included (seconds)."""

_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
_PAGE_SIZE = 25
_INSTANCES_PATH = "/api/v1/instances/"
_INSTANCE_ORDER = json.dumps([{"col": "id", "dir": "asc"}])
_KEY_HELP = "Set VAST_API_KEY or run `vastai set api-key`"
_LOG_POLLS = 30
_LOG_POLL_DELAY = 0.5
_OFFER_TYPES = {"on-demand": "on-demand", "bid": "bid", "interruptible": "bid", "reserved": "reserved"}

Sleep = Callable[[float], Awaitable[None]]
_Model = TypeVar("_Model", bound=BaseModel)


DEFAULT_URL = "https://console.vast.ai"
"""Vast's API; ``[vast] url`` and ``VAST_URL`` point the client elsewhere (the simulator, a proxy)."""


class _RetryableStatus(Exception):
    """A response worth another try; carried through tenacity so the last one can become the error."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response
        self.retry_after = _retry_after(response)


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None without a usable one."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _wait_strategy(max_wait: float) -> Callable[[RetryCallState], float]:
    """Exponential backoff with jitter, or the server's ``Retry-After``; no single wait longer than `max_wait`."""
    backoff = wait_random_exponential(multiplier=0.5, max=min(30.0, max_wait))

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, _RetryableStatus) and error.retry_after is not None:
            return min(error.retry_after, max_wait)
        return backoff(state)

    return wait


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    log.debug(redact(f"attempt {state.attempt_number} failed ({error!r}); retrying in {wait:.2f} s"))


def _transient(error: BaseException) -> bool:
    return isinstance(error, _RetryableStatus | httpx.TransportError)


def _certainly_not_processed(error: BaseException) -> bool:
    """True when the server surely did nothing: it refused with 429, or the connection never opened."""
    if isinstance(error, _RetryableStatus):
        return error.response.status_code == 429
    return isinstance(error, _NEVER_SENT)


def _error_details(response: httpx.Response) -> tuple[str | None, str | None]:
    """The ``error`` code and human message from an error body, if it is Vast's JSON."""
    try:
        body = response.json()
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    code = body.get("error")
    message = body.get("msg") or body.get("detail") or body.get("message")
    return (str(code) if code else None), (str(message) if message else None)


def _refusal(body: dict[str, Any]) -> tuple[str | None, str]:
    """The ``error`` code and the reason to show from a ``{"success": false, ...}`` body."""
    code = str(body["error"]) if body.get("error") else None
    return code, str(body.get("msg") or code or "no reason given")


def _instance_id(value: object) -> int | None:
    """An instance id as Vast sends it (int or numeric string), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _is_json(response: httpx.Response) -> bool:
    try:
        response.json()
    except ValueError:
        return False
    return True


def _content_kind(response: httpx.Response) -> str:
    content_type = response.headers.get("content-type", "")
    if "html" in content_type.lower() or response.text.lstrip().lower().startswith(("<!doctype", "<html")):
        return "an HTML page"
    return content_type or "a response without a content type"


def _model(model: type[_Model], row: object, what: str) -> _Model:
    """Validate one row; the error names the fields, never the values (rows can carry secrets in env)."""
    try:
        return model.model_validate(row)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or what}: {e['msg']}" for e in exc.errors())
        raise ApiError(f"The Vast API sent {what} vastevents cannot read ({problems})") from None


def _create_body(rental: Rental) -> dict[str, Any]:
    """The ``PUT /asks/{id}/`` body as the official CLI sends it; the optional parts only when given."""
    body: dict[str, Any] = {
        "client_id": "me",
        "image": rental.image or None,
        "env": dict(rental.env),
        "price": rental.price,
        "disk": rental.disk,
        "label": rental.label,
        "onstart": rental.onstart,
        "runtype": rental.runtype,
    }
    if rental.template_hash:
        body["template_hash_id"] = rental.template_hash
    if rental.template_id is not None:
        body["template_id"] = rental.template_id
    if rental.image_login:
        register_secret(rental.image_login)
        body["image_login"] = rental.image_login
    if rental.volume is not None:
        body["volume_info"] = rental.volume.to_wire()
    return body


class _InstancePageBody(BaseModel):
    """A list page as Vast sends it, read straight from the bytes (what is not read here is ignored)."""

    model_config = ConfigDict(frozen=True)

    instances: list[Instance]
    next_token: Any = None


@dataclass(frozen=True, slots=True)
class _InstancePage:
    """One page of the instance list, with the bytes it was read from (to know it again next poll)."""

    content: bytes
    instances: Sequence[Instance]
    next_token: Any


class VastClient:
    """Async Vast.ai API client; use ``async with VastClient(key) as client:`` or call :meth:`aclose`.

    `max_attempts` and `max_wait` (the longest single wait between attempts, ``Retry-After`` included) set the
    patience: the defaults suit a long-running watcher; an interactive command wants fewer and shorter waits.
    """

    def __init__(
        self,
        api_key: str | None,
        base_url: str = DEFAULT_URL,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float | httpx.Timeout = 30.0,
        max_attempts: int = 5,
        max_wait: float = MAX_RETRY_AFTER,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if max_wait < 0:
            raise ValueError("max_wait must not be negative")
        register_secret(api_key)
        self._api_key = api_key or None
        self.base_url = base_url.rstrip("/")
        self._max_attempts = max_attempts
        self._wait = _wait_strategy(max_wait)
        self._sleep = sleep
        headers = {"Accept": "application/json", "User-Agent": "vastevents"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, transport=transport, timeout=timeout)
        self._pages: dict[str | None, _InstancePage] = {}
        """The pages of the last complete instance list, by cursor: an unchanged page is not parsed again."""

    def __repr__(self) -> str:
        key = REDACTED if self._api_key else None
        return f"VastClient(base_url={self.base_url!r}, api_key={key!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- account -------------------------------------------------------------------------------------------

    async def current_user(self) -> dict[str, Any]:
        return await self._request_dict("GET", "/api/v0/users/current/")

    async def charges(
        self, *, start: float | None = None, end: float | None = None, limit: int = 100, after_token: str | None = None
    ) -> dict[str, Any]:
        """Charges between `start` and `end` (unix seconds; default the last 7 days), one page of `limit`."""
        return await self._request_dict(
            "GET", "/api/v0/charges/", params=self._billing_params("day", start, end, limit, after_token, "table")
        )

    async def invoices(
        self, *, start: float | None = None, end: float | None = None, limit: int = 100, after_token: str | None = None
    ) -> dict[str, Any]:
        """Invoices between `start` and `end` (unix seconds; default the last 7 days), one page of `limit`."""
        return await self._request_dict(
            "GET", "/api/v1/invoices/", params=self._billing_params("when", start, end, limit, after_token, None)
        )

    @staticmethod
    def _billing_params(
        date_column: str, start: float | None, end: float | None, limit: int, after_token: str | None, fmt: str | None
    ) -> dict[str, str]:
        week = 7 * 24 * 3600
        end = end if end is not None else (start + week if start is not None else time.time())
        start = start if start is not None else end - week
        params = {
            "select_filters": json.dumps({date_column: {"gte": int(start), "lte": int(end)}}),
            "latest_first": "false",
            "limit": str(min(max(limit, 1), 100)),
        }
        if fmt:
            params["format"] = fmt
        if after_token:
            params["after_token"] = after_token
        return params

    # --- offers and renting ----------------------------------------------------------------------------------

    async def search_offers(
        self,
        query: str | dict[str, Any],
        *,
        type: str = "on-demand",
        limit: int | None = None,
        order: list[list[str]] | None = None,
    ) -> list[Offer]:
        """Offers matching `query` (the CLI's query language, or an already-built JSON query dict)."""
        body = parse_query(query) if isinstance(query, str) else dict(query)
        if type not in _OFFER_TYPES:
            raise ValueError(f"offer type must be one of {', '.join(_OFFER_TYPES)}, not {type!r}")
        body["type"] = _OFFER_TYPES[type]
        if order is not None:
            body["order"] = order
        body.setdefault("order", [["dph_total", "asc"]])
        if limit is not None:
            body["limit"] = limit
        result = await self._request_dict("POST", "/api/v0/bundles/", json_body=body)
        rows = result.get("offers")
        if not isinstance(rows, list):
            raise ApiError("The Vast API answered an offer search without an 'offers' list")
        return [_model(Offer, row, "an offer") for row in rows]

    async def create_instance(self, rental: Rental) -> int:
        """Rent `rental`'s offer; returns the new instance id. A non-null price makes it an interruptible bid.

        Raises :class:`NoSuchAsk` when someone rented the offer first, and :class:`AmbiguousCreate` when an
        instance may exist although the call failed (reconcile by label, destroy what you do not want).
        """
        ask_id, label = rental.ask_id, rental.label
        path = f"/api/v0/asks/{ask_id}/"
        body = _create_body(rental)
        unclear = f"Creating an instance from offer {ask_id} may or may not have succeeded"
        reconcile = (
            f"reconcile by label {label!r}" if label else "no label was sent to match: look in `vastevents status`"
        )
        try:
            response = await self._send("PUT", path, json_body=body, resend=_certainly_not_processed)
        except _NEVER_SENT as exc:
            raise self._unreachable(exc) from None
        except httpx.TransportError as exc:
            raise AmbiguousCreate(
                f"{unclear} (the connection failed mid-request: {type(exc).__name__}); {reconcile}"
            ) from None
        status = response.status_code
        try:
            result = response.json()
        except ValueError:
            result = None
        failed = status >= 400 or (isinstance(result, dict) and result.get("success") is False)
        if failed and isinstance(result, dict) and result.get("new_contract"):
            instance_id = _instance_id(result["new_contract"])
            code, detail = _refusal(result)
            created = f"instance {instance_id}" if instance_id is not None else "an instance"
            raise AmbiguousCreate(
                redact(f"{unclear}: Vast reported failure ({detail}) but created {created}; destroy or adopt it"),
                instance_id=instance_id,
                status_code=status,
                error=code,
            )
        if status >= 500:
            raise AmbiguousCreate(f"{unclear} (HTTP {status}); {reconcile}", status_code=status)
        if status >= 400:
            raise self._error(response, "PUT", path, ask_id=ask_id)
        if not isinstance(result, dict):
            raise AmbiguousCreate(f"{unclear}: the answer was not Vast's JSON (HTTP {status}); {reconcile}")
        if result.get("success") is False:
            code, detail = _refusal(result)
            raise ApiError(
                redact(f"Vast refused to create an instance from offer {ask_id}: {detail}"),
                status_code=status,
                error=code,
            )
        instance_id = _instance_id(result.get("new_contract"))
        if instance_id is None:
            raise AmbiguousCreate(f"{unclear}: the answer named no new instance; {reconcile}")
        return instance_id

    # --- instances -----------------------------------------------------------------------------------------

    async def list_instances(self) -> list[Instance]:
        """Every instance on the account, one GET per page of 25; any failed page fails the whole list.

        A page that arrives byte for byte as in the previous complete list gives the same (frozen) rows again,
        so parsing and the diff after it cost nothing for the part of an account that did not change.
        """
        instances: dict[int, Instance] = {}
        params = {"select_filters": "{}", "order_by": _INSTANCE_ORDER, "limit": str(_PAGE_SIZE)}
        tokens: set[str] = set()
        pages: dict[str | None, _InstancePage] = {}
        while True:
            cursor = params.get("after_token")
            response = await self._response("GET", _INSTANCES_PATH, params=params)
            page = pages[cursor] = self._instance_page(response, self._pages.get(cursor))
            for instance in page.instances:
                instances[instance.id] = instance
            token = page.next_token
            if not token:
                self._pages = pages
                return list(instances.values())
            token = str(token)
            if token in tokens:
                raise ApiError("The Vast API repeated a page token while listing instances; try again")
            tokens.add(token)
            params["after_token"] = token

    def _instance_page(self, response: httpx.Response, previous: _InstancePage | None) -> _InstancePage:
        """The page in `response`: `previous` again if the bytes are the same, else parsed from the bytes.

        Whatever the one-pass parse refuses goes through the step-by-step reading, which names the problem.
        """
        content = response.content
        if previous is not None and previous.content == content:
            return previous
        try:
            body = _InstancePageBody.model_validate_json(content)
        except ValidationError:
            pass
        else:
            return _InstancePage(content, body.instances, body.next_token)
        page = self._decoded_dict(response, "GET", _INSTANCES_PATH)
        rows = page.get("instances")
        if not isinstance(rows, list):
            raise ApiError("The Vast API answered the instance list without an 'instances' list")
        return _InstancePage(
            content, [_model(Instance, row, "an instance row") for row in rows], page.get("next_token")
        )

    async def get_instance(self, instance_id: int) -> Instance | None:
        """One instance, or None once it is gone."""
        try:
            result = await self._request_dict("GET", f"/api/v0/instances/{instance_id}/", params={"owner": "me"})
        except NotFound:
            return None
        row = result.get("instances")
        if row is None:
            return None
        return _model(Instance, row, "an instance row")

    async def destroy_instance(self, instance_id: int) -> bool:
        """Destroy an instance; False when it was already gone (404), so destroying is safe to repeat."""
        try:
            await self._action("DELETE", f"/api/v0/instances/{instance_id}/", {})
        except NotFound:
            return False
        return True

    async def start_instance(self, instance_id: int) -> None:
        await self._action("PUT", f"/api/v0/instances/{instance_id}/", {"state": "running"})

    async def stop_instance(self, instance_id: int) -> None:
        await self._action("PUT", f"/api/v0/instances/{instance_id}/", {"state": "stopped"})

    async def reboot_instance(self, instance_id: int) -> None:
        await self._action("PUT", f"/api/v0/instances/reboot/{instance_id}/", {})

    async def set_label(self, instance_id: int, label: str) -> None:
        await self._action("PUT", f"/api/v0/instances/{instance_id}/", {"label": label})

    async def change_bid(self, instance_id: int, price: float) -> None:
        await self._action("PUT", f"/api/v0/instances/bid_price/{instance_id}/", {"client_id": "me", "price": price})

    async def request_logs(self, instance_id: int, tail: int = 50) -> str:
        """The last `tail` lines of an instance's log: ask for them, then poll the result URL a bounded time."""
        path = f"/api/v0/instances/request_logs/{instance_id}/"
        result = await self._action("PUT", path, {"tail": str(tail)})
        result_url = result.get("result_url")
        if not isinstance(result_url, str) or not result_url:
            raise ApiError(f"The Vast API gave no result_url for the logs of instance {instance_id}")
        same_origin = httpx.URL(result_url).netloc == httpx.URL(self.base_url).netloc
        headers = {"Authorization": f"Bearer {self._api_key}"} if same_origin and self._api_key else {}
        status: str = "no answer"
        for attempt in range(_LOG_POLLS):
            if attempt:
                await self._sleep(_LOG_POLL_DELAY)
            try:
                response = await self._http.send(httpx.Request("GET", result_url, headers=headers))
            except httpx.TransportError as exc:
                status = type(exc).__name__
                continue
            log.debug(redact(f"GET {httpx.URL(result_url).path} -> {response.status_code}"))
            if response.status_code == 200:
                return response.text
            status = f"HTTP {response.status_code}"
        raise ApiError(f"The logs of instance {instance_id} were not ready after {_LOG_POLLS} tries (last: {status})")

    # --- ssh keys ------------------------------------------------------------------------------------------

    async def list_ssh_keys(self) -> list[dict[str, Any]]:
        result = await self._request("GET", "/api/v0/ssh/")
        if isinstance(result, dict):
            result = next((value for value in result.values() if isinstance(value, list)), [])
        if not isinstance(result, list):
            raise ApiError("The Vast API answered the SSH key list with something that is not a list")
        return [key for key in result if isinstance(key, dict)]

    async def add_ssh_key(self, public_key: str) -> dict[str, Any]:
        return await self._action("POST", "/api/v0/ssh/", {"ssh_key": public_key})

    async def attach_ssh_key(self, instance_id: int, public_key: str) -> dict[str, Any]:
        return await self._action("POST", f"/api/v0/instances/{instance_id}/ssh/", {"ssh_key": public_key})

    # --- volumes and templates -----------------------------------------------------------------------------

    async def list_volumes(self) -> list[Volume]:
        """The account's volumes (``show volumes``)."""
        result = await self._request_dict("GET", "/api/v0/volumes/", params={"owner": "me", "type": "all_volume"})
        rows = result.get("volumes")
        if not isinstance(rows, list):
            raise ApiError("The Vast API answered the volume list without a 'volumes' list")
        return [_model(Volume, row, "a volume row") for row in rows]

    async def search_volume_offers(self, query: dict[str, Any], *, limit: int = 10) -> list[Offer]:
        """Volume offers (``search volumes``) matching a JSON `query` (e.g. ``{"machine_id": {"eq": 7}}``)."""
        body = {"verified": {"eq": True}, "external": {"eq": False}, **query, "limit": limit}
        result = await self._request_dict("POST", "/api/v0/volumes/search/", json_body=body)
        rows = result.get("offers")
        if not isinstance(rows, list):
            raise ApiError("The Vast API answered a volume offer search without an 'offers' list")
        return [_model(Offer, row, "a volume offer") for row in rows]

    async def delete_volume(self, volume_id: int) -> bool:
        """Delete a volume (its instances destroyed first); False when it was already gone."""
        try:
            result = await self._request_dict("DELETE", "/api/v0/volumes/", params={"id": str(volume_id)})
        except NotFound:
            return False
        if result.get("success") is False:
            code, detail = _refusal(result)
            raise ApiError(redact(f"The Vast API refused to delete volume {volume_id}: {detail}"), error=code)
        return True

    async def search_templates(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        """Templates (``search templates``) matching `filters` (``{"hash_id": {"eq": ...}}``)."""
        params = {"select_cols": json.dumps(["*"]), "select_filters": json.dumps(filters)}
        result = await self._request_dict("GET", "/api/v0/template/", params=params)
        rows = result.get("templates")
        return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []

    # --- plumbing ------------------------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        resend: Callable[[BaseException], bool] = _transient,
    ) -> httpx.Response:
        """Send with retries (those `resend` allows); return the last response, even a 429/5xx one.

        Raises ``httpx.TransportError`` when the last attempt could not get a response at all.
        """
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=self._wait,
            retry=retry_if_exception(resend),
            sleep=self._sleep,
            before_sleep=_log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    started = time.monotonic()
                    response = await self._http.request(method, path, params=params, json=json_body)
                    elapsed_ms = (time.monotonic() - started) * 1000
                    log.debug(
                        redact(
                            f"{method} {response.request.url.raw_path.decode()} -> "
                            f"{response.status_code} ({elapsed_ms:.0f} ms)"
                        )
                    )
                    if response.status_code in _RETRY_STATUSES:
                        raise _RetryableStatus(response)
        except _RetryableStatus as last:
            return last.response
        return response

    async def _request(
        self, method: str, path: str, *, params: dict[str, str] | None = None, json_body: Any = None
    ) -> Any:
        """Send (with retries) and return the decoded JSON, or raise the :class:`ApiError` that fits."""
        response = await self._response(method, path, params=params, json_body=json_body)
        return self._decoded(response, method, path)

    async def _response(
        self, method: str, path: str, *, params: dict[str, str] | None = None, json_body: Any = None
    ) -> httpx.Response:
        """Send (with retries) and return a successful JSON response, or raise the :class:`ApiError` that fits."""
        try:
            response = await self._send(method, path, params=params, json_body=json_body)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise self._error(response, method, path)
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise ApiError(
                f"The Vast API answered {method} {path} with {_content_kind(response)} instead of JSON "
                f"(HTTP {response.status_code}); is {self.base_url} the Vast API?",
                status_code=response.status_code,
            )
        return response

    @staticmethod
    def _decoded(response: httpx.Response, method: str, path: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ApiError(
                f"The Vast API sent malformed or truncated JSON for {method} {path} (HTTP {response.status_code}); "
                "try again",
                status_code=response.status_code,
            ) from None

    def _decoded_dict(self, response: httpx.Response, method: str, path: str) -> dict[str, Any]:
        result = self._decoded(response, method, path)
        if not isinstance(result, dict):
            raise ApiError(f"The Vast API answered {method} {path} with JSON that is not an object")
        return result

    async def _request_dict(
        self, method: str, path: str, *, params: dict[str, str] | None = None, json_body: Any = None
    ) -> dict[str, Any]:
        response = await self._response(method, path, params=params, json_body=json_body)
        return self._decoded_dict(response, method, path)

    async def _action(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A state-changing call; ``{"success": false}`` becomes an :class:`ApiError`."""
        result = await self._request_dict(method, path, json_body=body)
        if result.get("success") is False:
            code, detail = _refusal(result)
            raise ApiError(redact(f"The Vast API refused {method} {path}: {detail}"), error=code)
        return result

    def _unreachable(self, exc: httpx.TransportError) -> ApiError:
        return ApiError(
            redact(
                f"Could not reach the Vast API at {self.base_url} after {self._max_attempts} attempts "
                f"({type(exc).__name__}: {exc or 'no detail'}); check the network or VAST_URL"
            )
        )

    def _error(self, response: httpx.Response, method: str, path: str, *, ask_id: int | None = None) -> ApiError:
        """Map an HTTP error response to the error a user can act on (never echoing the key)."""
        status = response.status_code
        code, message = _error_details(response)
        detail = f": {message}" if message else (f": {code}" if code else "")
        if status in (401, 403):
            if self._api_key is None:
                text = f"The Vast API needs an API key (HTTP {status}{detail}). {_KEY_HELP}."
            else:
                text = f"The Vast API rejected the API key (HTTP {status}{detail}). {_KEY_HELP}."
            return AuthError(redact(text), status_code=status, error=code)
        if status in (404, 410) and (
            code == "no_such_ask" or (ask_id is not None and code is None and _is_json(response))
        ):
            what = f"Offer {ask_id}" if ask_id is not None else "The offer"
            return NoSuchAsk(
                redact(f"{what} is no longer available (HTTP {status}{detail}); try the next offer"),
                status_code=status,
                error=code or "no_such_ask",
            )
        if status in (404, 410):
            return NotFound(
                redact(f"{method} {path}: not found (HTTP {status}{detail})"), status_code=status, error=code
            )
        if status == 429:
            retry_after = _retry_after(response)
            when = f"wait {math.ceil(retry_after)} s" if retry_after is not None else "wait a minute"
            return RateLimited(
                redact(
                    f"The Vast API is rate-limiting requests (HTTP 429{detail}) after {self._max_attempts} "
                    f"attempts; {when} and try again"
                ),
                retry_after=retry_after,
            )
        if status >= 500:
            body = detail or f" ({_content_kind(response)})"
            return ApiError(
                redact(f"The Vast API failed {method} {path} with HTTP {status}{body}; try again later"),
                status_code=status,
                error=code,
            )
        return ApiError(
            redact(f"The Vast API refused {method} {path} (HTTP {status}{detail})"), status_code=status, error=code
        )

    # --- webhooks: Vast's signed account notifications ----------------------------------------------------

    async def list_webhooks(self) -> list[dict[str, Any]]:
        """The registered webhooks (never with their secrets: Vast returns a secret only on create and rotate)."""
        result = await self._request("GET", "/api/v0/webhooks/")
        if isinstance(result, dict):
            result = next((value for value in result.values() if isinstance(value, list)), [])
        if not isinstance(result, list):
            raise ApiError("The Vast API answered the webhook list with something that is not a list")
        return [hook for hook in result if isinstance(hook, dict)]

    async def create_webhook(self, url: str, types: list[str] | None = None) -> dict[str, Any]:
        """Register `url` for `types` (e.g. ``client:outbid``; all types when None); the answer holds the secret."""
        body: dict[str, Any] = {"url": url}
        if types:
            body["notif_types"] = types
        return _with_secret_registered(await self._action("POST", "/api/v0/webhooks/", body))

    async def delete_webhook(self, webhook_id: int) -> None:
        await self._request("DELETE", f"/api/v0/webhooks/{webhook_id}/")

    async def rotate_webhook_secret(self, webhook_id: int) -> dict[str, Any]:
        """A new secret for the webhook (the old one stops verifying); the answer holds it."""
        return _with_secret_registered(await self._action("POST", f"/api/v0/webhooks/{webhook_id}/rotate-secret/", {}))

    async def test_webhook(self, webhook_id: int) -> dict[str, Any]:
        """Ask Vast to send the webhook a signed ``webhook_test`` delivery (data null, not retried)."""
        return await self._action("POST", f"/api/v0/webhooks/{webhook_id}/test/", {})


def _with_secret_registered(answer: dict[str, Any]) -> dict[str, Any]:
    """Register a webhook secret in `answer` for redaction before anyone can log it."""
    secret = answer.get("secret")
    if isinstance(secret, str):
        register_secret(secret)
    return answer
