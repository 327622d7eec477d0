"""Run a vastevents command (``watch``) on a test simulator's time instead of the wall clock.

    python tests/simtime_watch.py watch --config team.toml ...     # with SIMTIME_FILE=<file the test writes>

The watcher stamps events, opens and closes ledger intervals, accrues budgets and times its polls, retries and
periodic handlers on its clock. On the wall clock all of that would depend on how fast the machine runs the
test. Here the clock is a ManualClock that follows the moment the test last wrote to ``SIMTIME_FILE`` (its
simulator's ManualClock, written after each ``advance``): time moves only when the test moves it, and a loop
sleeping on it wakes exactly then. That clock is the only difference from the real command; leadership and
handler timeouts still run on the wall clock.

:func:`pass_marker`, configured as the last handler, tells a test when a pass of the periodic handlers is over:
the runtime records a periodic run as it starts, and runs them one after another in config order, so a
recorded run of the last one means the others have finished.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime
from pathlib import Path

from vastevents import Context, every
from vastevents.clock import ManualClock

FOLLOW_SECONDS = 0.005
"""How often the clock looks for a new moment in the file (wall seconds)."""


def write_moment(path: Path, moment: datetime) -> None:
    """Atomically tell every process following `path` that it is now `moment`."""
    part = path.with_suffix(".part")
    part.write_text(moment.isoformat())
    os.replace(part, path)


def followed_clock(path: Path) -> ManualClock:
    """A ManualClock (no auto-advance) that moves to each moment written to `path`, from a daemon thread."""
    clock = ManualClock(datetime.fromisoformat(path.read_text()), auto_advance=False)

    def follow() -> None:
        seen = ""
        while True:
            text = path.read_text()
            if text != seen:
                clock.set(datetime.fromisoformat(text))
                seen = text
            time.sleep(FOLLOW_SECONDS)

    threading.Thread(target=follow, name="simtime-follow", daemon=True).start()
    return clock


@every("1s")
async def pass_marker(ctx: Context) -> None:
    """Nothing to do: that it ran is the mark."""


def main() -> None:
    from vastevents import runtime
    from vastevents.cli import main as cli

    clock = followed_clock(Path(os.environ["SIMTIME_FILE"]))
    # `watch` builds its Runtime without a clock, so the Runtime takes its default: make that this one.
    runtime.SystemClock = lambda: clock  # type: ignore[attr-defined,assignment,return-value]
    cli()


if __name__ == "__main__":
    main()
