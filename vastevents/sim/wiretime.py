"""How the simulator's times and money look to its clients: on the clock the client itself reads.

A client that shares the simulator's clock (a test's ManualClock, ``watch --sim``, the demo) sees simulated
times as they are. A client of ``vastevents sim --speed 30`` reads the wall clock while the simulated world runs
30 times faster: shown as they are, its dates would lie in the future (the CLI prints negative ages), the
default window of ``show invoices-v1`` would miss every charge, and a ledger kept on wall time would disagree
with the charges by the speed factor. So on the wire every simulated moment maps linearly onto the wall clock
(the simulated "now" is the wall now) and money accrues per wall second: the lifecycle runs faster, while
dates, ages and charges stay consistent with the clock the client reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from vastevents.clock import Clock


@dataclass(frozen=True)
class WireTime:
    """``at(t)``: where simulated moment `t` lies on the client's clock; `scale`: client s per simulated s."""

    sim_anchor: float = 0.0
    wall_anchor: float = 0.0
    scale: float = 1.0

    @classmethod
    def on_wall_clock(cls, *, sim_now: float, wall_now: float, speed: float) -> WireTime:
        """For clients on the wall clock of a simulator whose clock reads `sim_now` at wall time `wall_now`."""
        return cls(sim_anchor=sim_now, wall_anchor=wall_now, scale=1.0 / speed)

    def at(self, moment: float) -> float:
        return self.wall_anchor + (moment - self.sim_anchor) * self.scale

    def span(self, seconds: float) -> float:
        """A simulated duration, or an amount accrued over one (money), as the client's clock measures it."""
        return seconds * self.scale

    def iso(self, moment: float) -> str:
        return datetime.fromtimestamp(self.at(moment), UTC).isoformat()


class ClientClock:
    """The clock a client reads: the simulator's clock seen through a WireTime (webhook timestamps use it)."""

    def __init__(self, clock: Clock, wire: WireTime) -> None:
        self._clock = clock
        self._wire = wire

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._wire.at(self._clock.now().timestamp()), UTC)

    async def sleep(self, seconds: float) -> None:
        await self._clock.sleep(seconds / self._wire.scale)
