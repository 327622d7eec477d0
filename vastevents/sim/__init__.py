"""A local Vast.ai: the wire protocol on loopback, an accelerated lifecycle, scripted faults, real sshd hosts.

``from vastevents.sim import Simulator`` is the whole public surface; the rest is private.
"""

from __future__ import annotations

from vastevents.sim.simulator import Simulator

__all__ = ["Simulator"]
