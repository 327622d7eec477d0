"""``vastevents sim``: serve a local Vast on loopback, or show a running one (``--status``)."""

from __future__ import annotations

import errno
import os
import re
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from vastevents._logging import register_secret
from vastevents.cli._app import EXIT_INTERRUPTED, app, fail, table_console
from vastevents.errors import VastEventsError

DEFAULT_PORT = 8642
DEFAULT_KEY = "sim-key"
_VAST_KEY_SHAPE = re.compile(r"[0-9a-f]{64}")  # a real Vast API key: never echoed, even to the simulator's user


@app.command()
def sim(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on (keep it loopback).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = DEFAULT_PORT,
    api_key: Annotated[
        str, typer.Option("--api-key", envvar="VASTEVENTS_SIM_KEY", help="The key clients must send.")
    ] = DEFAULT_KEY,
    speed: Annotated[float, typer.Option(min=0.001, metavar="FACTOR", help="Simulated seconds per real second.")] = 1.0,
    scenario: Annotated[
        str | None,
        typer.Option(
            metavar="FILE|NAME", help="Scenario file (TOML/JSON) or a built-in one by name (demo): world and faults."
        ),
    ] = None,
    state: Annotated[Path | None, typer.Option(help="State file: kept across restarts of the simulator.")] = None,
    ssh: Annotated[
        bool,
        typer.Option("--ssh/--no-ssh", show_default=False, help="Back running instances with real sshd (default: no)."),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the generated market of hosts.")] = 0,
    status: Annotated[
        bool,
        typer.Option(
            "--status",
            help="Show hosts, instances and spend of the simulator at --host/--port (else $VAST_URL, $VAST_API_KEY).",
        ),
    ] = False,
) -> None:
    """Serve the Vast API on loopback from a simulated market, with faults scripted or injected via /_sim/."""
    register_secret(api_key)
    if status:
        _show_status(*_status_target(ctx, host, port, api_key))
        return
    from vastevents.sim import Simulator  # only serving needs the simulator

    try:
        simulator = Simulator(
            api_key=api_key, speed=speed, scenario=scenario, state=state, ssh=ssh, seed=seed, host=host, port=port
        )
    except (VastEventsError, OSError) as exc:
        fail(str(exc), 2)  # the scenario or the state file: what the user gave
    done = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    # Before starting: a SIGTERM while sshd hosts come up must still end them, not kill us and orphan them.
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        simulator.start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            fail(f"port {port} on {host} is already in use: stop what listens there, or pass --port 0 for a free one")
        fail(str(exc))
    except VastEventsError as exc:
        fail(str(exc))
    # The simulator's own key is no Vast secret, so the hint shows it; one shaped like a real key stays hidden.
    shown_key = "<the key you passed>" if _VAST_KEY_SHAPE.fullmatch(api_key) else api_key
    typer.echo(f"vastevents sim listening on {simulator.url} (speed x{speed:g}{', ssh hosts' if ssh else ''})")
    typer.echo(f"  use it: VAST_URL={simulator.url} VAST_API_KEY={shown_key} vastevents watch")
    typer.echo(f"  status: vastevents sim --status (with those two set); admin: POST {simulator.url}/_sim/<action>")
    try:
        while not done.wait(0.5):
            pass
    finally:
        simulator.stop()
        typer.echo("vastevents sim stopped")
    raise typer.Exit(EXIT_INTERRUPTED)  # a server ends only by Ctrl-C or SIGTERM: the interrupted convention


def _status_target(ctx: typer.Context, host: str, port: int, api_key: str) -> tuple[str, str]:
    """Where ``--status`` looks, with which key: --host/--port/--api-key if given, else $VAST_URL/$VAST_API_KEY."""
    sources = {name: ctx.get_parameter_source(name) for name in ("host", "port", "api_key")}
    given = {name for name, source in sources.items() if source is not None and source.name != "DEFAULT"}
    env_url, env_key = os.environ.get("VAST_URL"), os.environ.get("VAST_API_KEY")
    url = env_url.rstrip("/") if env_url and not {"host", "port"} & given else f"http://{host}:{port}"
    key = env_key if env_key and "api_key" not in given else api_key
    register_secret(key)
    return url, key


def _show_status(url: str, api_key: str) -> None:
    try:
        response = httpx.get(f"{url}/_sim/state", headers={"Authorization": f"Bearer {api_key}"}, timeout=10)
    except httpx.HTTPError as exc:
        fail(f"no simulator answering at {url}: {exc}")
    if response.status_code in (401, 403):
        fail(f"the simulator at {url} refused the key: pass the one it was started with (--api-key or VAST_API_KEY)")
    try:
        response.raise_for_status()
        state: dict[str, Any] = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        fail(f"{url} does not answer like a vastevents simulator: {exc}")
    console = table_console()
    console.print(f"[bold]{url}[/] simulated time {state['now']} (speed x{state['speed']:g}), "
                  f"scenario step {state['steps_done']}/{state['steps_total']}")  # fmt: skip
    hosts = Table(
        "machine", "host", "gpu", "free/total", "$/h per gpu", "reliability", "where", "online", title="Hosts"
    )
    for m in state["machines"]:
        hosts.add_row(
            str(m["machine_id"]), str(m["host_id"]), m["gpu_name"], f"{m['free_gpus']}/{m['num_gpus']}",
            f"{m['dph_per_gpu']:.3f}", f"{m['reliability']:.3f}", m["geolocation"], "no" if m["offline"] else "yes",
        )  # fmt: skip
    console.print(hosts)
    instances = Table("id", "label", "status", "intended", "gpu", "$/h", "ssh", "message", title="Instances")
    for row in state["instances"]:
        instances.add_row(
            str(row["id"]), row["label"] or "-", row["actual_status"] or "scheduling", row["intended_status"],
            f"{row['num_gpus']}x {row['gpu_name']}", f"{row['dph_total']:.3f}",
            f"{row['ssh_host']}:{row['ssh_port']}", (row["status_msg"] or "")[:60],
        )  # fmt: skip
    console.print(instances)
    spend = Table("instance", "label", "gpu $", "storage $", "ended", title="Spend")
    for item in state["spend"]["instances"]:
        spend.add_row(str(item["id"]), item["label"] or "-", f"{item['gpu_usd']:.4f}", f"{item['storage_usd']:.4f}",
                      "yes" if item["ended"] else "no")  # fmt: skip
    console.print(spend)
    console.print(f"[bold]total spend[/] ${state['spend']['total_usd']:.4f}")
