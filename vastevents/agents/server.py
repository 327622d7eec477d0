"""The Model Context Protocol face of :class:`AgentSession`: tools with JSON schemas, two resources, two transports.

Built on the official SDK's low-level server, so that every call goes through one place: it is journaled as
``agent_call`` first, its arguments are validated here (a bad one is one line naming it), and any refusal or
failure becomes a tool result with ``isError: true`` and one line of text, never a traceback. Every result is JSON
text, redacted of every secret the process knows.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import mcp.types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vastevents import __version__
from vastevents._logging import redact
from vastevents.agents.session import AgentSession, Refused
from vastevents.errors import VastEventsError
from vastevents.jobspec import JobSpec

log = logging.getLogger(__name__)

JOURNAL_URI = "vastevents://journal"
JOB_LOG_TEMPLATE = "vastevents://jobs/{job_id}/log"
_JOB_LOG = re.compile(r"^vastevents://jobs/(\d+)/log$")

INSTRUCTIONS = """\
Run GPU jobs on Vast.ai through the user's vastevents watcher, which rents, runs, collects and always destroys.
Understand the job, call `estimate` with its spec, show the user the offer and max_cost_usd and get their yes,
`submit` with the quote_id, `wait` until the job ends (call it again after a timeout), read the results in
results_dir, and report the cost from `job`. Never rent or destroy by other means."""


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _NoArgs(_Args):
    pass


class _OffersArgs(_Args):
    query: str = Field(description="Offer query as in `vastai search offers`, e.g. 'gpu_ram>=24 num_gpus=1'.")
    limit: int = Field(10, ge=1, le=100, description="At most this many offers, cheapest first.")


class _SpecArgs(_Args):
    spec: JobSpec = Field(
        description="The job: `image`, `query` (which offers), `upload` (absolute path of a local input dir, the"
        " remote workdir), `cmd` (runs there), `download` (paths relative to the workdir), `max_duration` (e.g."
        " '30m'; default 1h, the job is killed then), `env` (secrets go here; they are masked)."
    )


class _SubmitArgs(_SpecArgs):
    quote_id: str = Field(description="From `estimate` for this exact spec, before it expires.")


class _JobArgs(_Args):
    job_id: int = Field(ge=1)


class _WaitArgs(_JobArgs):
    timeout_s: float = Field(60, ge=0, le=600, description="Return after this many seconds at the latest.")


class _LogsArgs(_JobArgs):
    tail: int = Field(100, ge=1, le=10000, description="The last this many lines.")


class _EventsArgs(_Args):
    since_id: int = Field(0, ge=0, description="Only events after this journal id.")
    names: list[str] = Field(default_factory=list, description="Only events of these names (empty: all).")


class _CostArgs(_Args):
    since: str | None = Field(None, description="Only spend from this UTC date or time, e.g. 2026-01-31.")


class _DestroyArgs(_Args):
    instance_id: int = Field(ge=1)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    args: type[_Args]
    call: Callable[[AgentSession, Any], Awaitable[Any]]


async def _offers(s: AgentSession, a: _OffersArgs) -> Any:
    return await s.offers(a.query, a.limit)


async def _estimate(s: AgentSession, a: _SpecArgs) -> Any:
    return await s.estimate(a.spec.to_json())


async def _submit(s: AgentSession, a: _SubmitArgs) -> Any:
    return await s.submit(a.spec.to_json(), a.quote_id)


async def _job(s: AgentSession, a: _JobArgs) -> Any:
    return s.job(a.job_id)


async def _wait(s: AgentSession, a: _WaitArgs) -> Any:
    return await s.wait(a.job_id, a.timeout_s)


async def _logs(s: AgentSession, a: _LogsArgs) -> Any:
    return await s.logs(a.job_id, a.tail)


async def _cancel(s: AgentSession, a: _JobArgs) -> Any:
    return s.cancel(a.job_id)


async def _jobs(s: AgentSession, a: _NoArgs) -> Any:
    return s.list_jobs()


async def _events(s: AgentSession, a: _EventsArgs) -> Any:
    return s.events(a.since_id, a.names)


async def _cost(s: AgentSession, a: _CostArgs) -> Any:
    return await s.cost(a.since)


async def _instances(s: AgentSession, a: _NoArgs) -> Any:
    return await s.instances()


async def _destroy(s: AgentSession, a: _DestroyArgs) -> Any:
    return await s.destroy(a.instance_id)


TOOLS = (
    Tool("offers", "Search rentable GPU offers, cheapest first (nothing is rented).", _OffersArgs, _offers),
    Tool("estimate", "Price a job: the offer it would rent, its $/h, the cost bound for max_duration, and a quote_id"
         " that `submit` needs. Show the user the price before submitting.", _SpecArgs, _estimate),
    Tool("submit", "Queue a priced job for the watcher, which rents, runs, downloads and destroys. Needs a fresh"
         " quote_id for the same spec; refused above the configured limits.", _SubmitArgs, _submit),
    Tool("job", "A job's status, phase, cause of failure, instance, cost so far and results_dir.", _JobArgs, _job),
    Tool("wait", "Wait until a job changes or ends, at most timeout_s; returns what `job` returns. Call it again"
         " until status is finished, failed or cancelled.", _WaitArgs, _wait),
    Tool("logs", "The last lines of a job's log: from its host while it runs, the downloaded copy after.",
         _LogsArgs, _logs),
    Tool("cancel", "Cancel a job: the watcher destroys what it rented and ends it cancelled (`wait` for that).",
         _JobArgs, _cancel),
    Tool("jobs", "The newest jobs in the store (as `vastevents jobs --json`), with their phase.", _NoArgs, _jobs),
    Tool("events", "Journaled events after since_id, oldest first, at most 200 a call.", _EventsArgs, _events),
    Tool("cost", "Spend per instance from the ledger beside Vast's charges (`vastevents cost --json`).",
         _CostArgs, _cost),
    Tool("instances", "Every instance on the account, and whether it is vastevents' to act on (owned).",
         _NoArgs, _instances),
    Tool("destroy", "Destroy an owned instance (label starting with the label prefix); others are refused.",
         _DestroyArgs, _destroy),
)  # fmt: skip
_BY_NAME = {tool.name: tool for tool in TOOLS}


def _error(message: str) -> types.CallToolResult:
    line = " ".join(redact(message).split())
    return types.CallToolResult(content=[types.TextContent(type="text", text=line)], is_error=True)


def _problem(tool: str, exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "arguments"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{tool}: {where}: {message} (see the tool's input schema)"


def build_server(session: AgentSession) -> Server[Any]:
    """The MCP server over `session`."""

    async def list_tools(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        return types.ListToolsResult(
            tools=[
                types.Tool(name=t.name, description=t.description, input_schema=t.args.model_json_schema())
                for t in TOOLS
            ]
        )

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> Any:
        tool = _BY_NAME.get(params.name)
        if tool is None:
            return _error(f"no tool {params.name!r}: the tools are {', '.join(_BY_NAME)}")
        arguments = dict(params.arguments or {})
        try:
            session.journal_call(tool.name, arguments)
            result = await tool.call(session, tool.args.model_validate(arguments))
        except ValidationError as exc:
            return _error(_problem(tool.name, exc))
        except VastEventsError as exc:  # Refused, and the API's and the store's errors: already one line
            return _error(str(exc))
        except Exception as exc:
            log.error("tool %s failed", tool.name, exc_info=True)
            return _error(f"{tool.name} failed: {type(exc).__name__}: {exc}")
        text = redact(json.dumps(result, indent=1))
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    async def list_resources(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        journal = types.Resource(
            uri=JOURNAL_URI,
            name="journal",
            description="The newest 200 journaled events (as `vastevents events --json`).",
            mime_type="application/json",
        )
        return types.ListResourcesResult(resources=[journal])

    async def list_templates(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        template = types.ResourceTemplate(
            uri_template=JOB_LOG_TEMPLATE,
            name="job log",
            description="A job's downloaded log, whole (the `logs` tool reads a running job's).",
            mime_type="text/plain",
        )
        return types.ListResourceTemplatesResult(resource_templates=[template])

    async def read_resource(ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams) -> Any:
        uri = str(params.uri)
        try:
            if uri == JOURNAL_URI:
                last = session.store.journal.last_id()
                text, mime = json.dumps(session.events(max(0, last - 200), []), indent=1), "application/json"
            elif found := _JOB_LOG.match(uri):
                text, mime = session.log_text(int(found.group(1))), "text/plain"
            else:
                raise Refused(f"no resource {uri}: read {JOURNAL_URI} or {JOB_LOG_TEMPLATE}")
        except VastEventsError as exc:
            raise MCPError(types.INVALID_PARAMS, redact(str(exc))) from None
        content = types.TextResourceContents(uri=uri, mime_type=mime, text=redact(text))
        return types.ReadResourceResult(contents=[content])

    return Server(
        "vastevents",
        version=__version__,
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
    )


async def serve_stdio(server: Server[Any]) -> None:
    """Serve one client on stdin/stdout until it closes them."""
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


async def serve_http(server: Server[Any], host: str, port: int, on_ready: Callable[[str], None]) -> None:
    """Serve streamable HTTP at ``http://HOST:PORT/mcp`` until cancelled; `on_ready` gets the URL once bound."""
    import uvicorn

    app = server.streamable_http_app(host=host)
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="on")
    web = uvicorn.Server(config)
    async with anyio.create_task_group() as group:
        group.start_soon(web.serve)
        while not web.started:
            await anyio.sleep(0.05)
        bound = web.servers[0].sockets[0].getsockname()
        on_ready(f"http://{host}:{bound[1]}/mcp")
