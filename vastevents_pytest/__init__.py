"""The vastevents simulator as a pytest plugin: installing vastevents gives every project the fixtures ``vast_sim``
and ``vast_sim_ssh`` (entry point ``pytest11``), so a test of one's own Vast tooling reads::

    def test_my_tool_destroys_what_it_rents(vast_sim):
        my_tool.run(url=vast_sim.url, api_key=vast_sim.api_key)
        vast_sim.advance(120)
        assert vast_sim.state()["instances"] == []

Each test gets its own simulator on a free loopback port (a :class:`vastevents.sim.VastSim`), stopped with every
sshd it started when the test ends. Time stands still unless the test moves it (``vast_sim.advance(90)``), so a
test never waits and never depends on the machine's speed; dates start at the wall clock's now.
``@pytest.mark.vast_sim(...)`` passes options on: ``scenario``, ``seed``, ``hosts``, ``rate_limits`` (off by
default), ``api_key``, or ``speed`` for a clock of its own running that many times faster than the wall clock
(then ``advance`` is refused). docs/simulator.md has the rest.

A module of its own, outside the ``vastevents`` package: pytest loads every installed plugin into every test run
of the environment, and importing vastevents takes a second or two. Nothing of it is imported until a test
asks for one of these fixtures.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from vastevents.sim import VastSim

SSH_HINT = (
    "vast_sim_ssh needs OpenSSH's sshd: `sudo apt-get install openssh-server` (Debian/Ubuntu), "
    "`sudo dnf install openssh-server` (Fedora), `brew install openssh` (macOS); or use vast_sim, which needs none"
)


def _simulator(request: pytest.FixtureRequest, *, ssh: bool) -> Iterator[VastSim]:
    from vastevents.sim.fixture import simulator_for_test

    marker = request.node.get_closest_marker("vast_sim")
    options = dict(marker.kwargs) if marker is not None else {}
    with ExitStack() as stack:
        try:
            sim = stack.enter_context(simulator_for_test(options, ssh=ssh))
        except ValueError as exc:
            raise pytest.UsageError(f"@pytest.mark.vast_sim: {exc}") from None
        yield sim


@pytest.fixture
def vast_sim(request: pytest.FixtureRequest) -> Iterator[VastSim]:
    """A Vast-compatible cloud on loopback for this test: ``url``, ``api_key``, ``inject``, ``state``, ``advance``."""
    yield from _simulator(request, ssh=False)


@pytest.fixture
def vast_sim_ssh(request: pytest.FixtureRequest) -> Iterator[VastSim]:
    """``vast_sim`` whose running instances are real OpenSSH servers on 127.0.0.1 (logins as the current user;
    ``root@`` when tests run as root). Skips with an install hint where sshd is missing; fails under CI=true."""
    from vastevents.sim import sshhost

    if sshhost.find_sshd() is None:
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(f"CI: {SSH_HINT}")
        pytest.skip(SSH_HINT)
    yield from _simulator(request, ssh=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "vast_sim(scenario=None, seed=0, hosts=None, rate_limits=False, api_key='sim-key', speed=None): "
        "options of the vast_sim and vast_sim_ssh fixtures (vastevents)",
    )
