"""Shared fixtures: an in-process simulator on a free loopback port, driven by a ManualClock."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from vastevents.clock import ManualClock
from vastevents.sim import Simulator

SIM_API_KEY = "sim-test-key-0123"


def _sim_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if "vastevents-sim" in t.name or "process_request" in t.name}


@pytest.fixture
def api_key() -> str:
    return SIM_API_KEY


@pytest.fixture
def sim(api_key: str) -> Iterator[Simulator]:
    """A started Simulator (ManualClock, seed 0, rate limits on); stopped at teardown, asserting nothing leaked."""
    before = _sim_threads()
    simulator = Simulator(api_key=api_key, clock=ManualClock())
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()
        leaked = {t for t in _sim_threads() - before if t.is_alive()}
        assert not leaked, f"simulator threads still alive after stop: {leaked}"
        assert simulator.ssh_pids() == []


@pytest.fixture
def sim_url(sim: Simulator) -> str:
    return sim.url


@pytest.fixture
def sim_client(sim: Simulator, api_key: str) -> Iterator[httpx.Client]:
    """An httpx client for the `sim` fixture, sending its key."""
    with httpx.Client(base_url=sim.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=10) as client:
        yield client
