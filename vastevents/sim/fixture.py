"""A simulator for one test: what the ``vast_sim`` pytest fixtures give (docs/simulator.md).

:func:`simulator_for_test` starts one from the options a test asks for and stops it, with every sshd it
started, when the test ends; :class:`VastSim` is the surface a test of Vast tooling needs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from vastevents.clock import ManualClock
from vastevents.sim.simulator import Simulator

OPTIONS = frozenset({"scenario", "seed", "hosts", "flaky", "rate_limits", "api_key", "speed"})
"""What ``@pytest.mark.vast_sim(...)`` may set."""


class VastSim:
    """A running simulator as a test sees it: where it listens, its key, faults, its state and its clock."""

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator
        """The whole :class:`~vastevents.sim.Simulator`, for anything beyond this surface."""

    @property
    def url(self) -> str:
        """The base URL to give a client instead of ``https://console.vast.ai`` (``VAST_URL``, ``--url``)."""
        return self.simulator.url

    @property
    def api_key(self) -> str:
        return self.simulator.api_key

    @property
    def env(self) -> dict[str, str]:
        """``VAST_URL`` and ``VAST_API_KEY`` for a subprocess (the official CLI, your own command)."""
        return {"VAST_URL": self.url, "VAST_API_KEY": self.api_key}

    def inject(self, action: str, **params: Any) -> dict[str, Any]:
        """A fault or owner action now, as ``POST /_sim/<action>`` runs it: ``inject("preempt", instance=42)``.

        Actions: preempt/outbid, offline/online/flap, stuck_loading, no_such_ask, create_error, reprice, rate_limit,
        server_error, slow, gpu_broken, disk_full, raw_status, vanish, expire, label, create, stop, start,
        reboot, destroy. Instances are named by id, label or label suffix. A bad action or parameter raises
        :class:`~vastevents.sim.model.SimError` with the simulator's message.
        """
        return self.simulator.apply(action, **params)

    def state(self) -> dict[str, Any]:
        """Everything ``GET /_sim/state`` shows: machines, live instances (API rows), spend, active faults."""
        return self.simulator.state()

    def advance(self, seconds: float) -> datetime:
        """Move simulated time forward; everything due meanwhile happens. Returns the new now."""
        return self.simulator.advance(seconds)


@contextmanager
def simulator_for_test(options: Mapping[str, Any], *, ssh: bool = False) -> Iterator[VastSim]:
    """A started simulator on a free loopback port, stopped on the way out.

    Unless `options` name a ``speed``, its clock is a ManualClock from the wall clock's now: time stands still
    until the test advances it. Rate limits are off unless asked for (on a clock that stands still a bucket
    never refills). An unknown option is a ValueError naming it.
    """
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(OPTIONS))}")
    settings: dict[str, Any] = {"rate_limits": False, **options}
    if "speed" not in settings:
        settings["clock"] = ManualClock(datetime.now(UTC))
    with Simulator(ssh=ssh, **settings) as simulator:
        yield VastSim(simulator)
