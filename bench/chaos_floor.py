"""The least time a C1 job could have taken, given the faults that hit it: its floor.

A job hit three or four times (each on-demand preemption costs ``preempt_grace`` and a new boot) cannot end
within C1's bound whatever the watcher does. :func:`floor_s` tells how long the fastest possible watcher would
have taken, so a reader of a late job sees how much of its latency the watcher added and how much the faults
themselves cost.

The fastest possible watcher sees every change the moment it happens and acts at once, with no time to connect,
upload, start or collect, and loses no work (a checkpoint at every moment). It is still bound by what binds every
watcher: it cannot act while it is down (between a SIGKILL and its restart) nor read or change the account during
an API storm; a new rental runs :data:`BOOT_S` after its create, a rebid instance :data:`RESUME_S` after the rebid;
an on-demand instance taken back is replaced only once it has been seen down for the grace; a host offline is
back when its flap ends. The faults are taken as they happened (their moments, and which job each one hit); one
that came after the fastest watcher would have finished the job is ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vastevents.sim.lifecycle import CREATE_S, RESTART_S, SCHEDULE_S
from vastevents.sim.model import DEFAULT_PULL_S

BOOT_S = SCHEDULE_S + CREATE_S + DEFAULT_PULL_S
"""A new rental's create -> running in the simulator (scheduling, created, the image pull)."""
RESUME_S = RESTART_S
"""A stopped instance's start (a rebid that wins) -> running in the simulator."""


@dataclass(frozen=True)
class Hit:
    """A fault aimed at a job's instance, in simulated seconds from the run's start."""

    at: float
    kind: str
    """``preempt`` (an on-demand instance taken back), ``outbid`` (a bid one) or ``flap`` (its host offline)."""
    job: int
    instance: int
    seconds: float = 0.0
    """How long a flap keeps the host offline."""


Window = tuple[float, float]
"""[start, end) in simulated seconds from the run's start: the watcher down, or every API request refused."""


def earliest_action(at: float, blocked: Sequence[Window]) -> float:
    """The first moment from `at` on that falls in none of the `blocked` windows."""
    moved = True
    while moved:
        moved = False
        for start, end in blocked:
            if start <= at < end:
                at, moved = end, True
    return at


def floor_s(
    submitted: float, hits: Sequence[Hit], blocked: Sequence[Window], *, work_s: float, grace_s: float
) -> float:
    """Submission -> end of a job of `work_s` seconds of work for the fastest possible watcher (module doc)."""
    runs_at = earliest_action(submitted, blocked) + BOOT_S  # when its command runs, on the instance of the moment
    done = 0.0  # work done before runs_at
    for hit in sorted(hits, key=lambda h: h.at):
        if hit.at >= runs_at + work_s - done:
            break  # it would have ended before this hit
        seen = earliest_action(hit.at, blocked)
        if hit.at < runs_at:  # still booting
            if hit.kind == "preempt":  # dropped at once (exited before running): the next offer
                runs_at = seen + BOOT_S
            elif hit.kind == "outbid":
                runs_at = seen + RESUME_S
            else:
                runs_at += hit.seconds  # the boot waits for the host
            continue
        done += hit.at - runs_at
        if hit.kind == "preempt":
            runs_at = earliest_action(seen + grace_s, blocked) + BOOT_S
        elif hit.kind == "outbid":
            runs_at = seen + RESUME_S
        else:  # the host back when the flap ends, or (past the grace) a replacement if that is sooner
            back = earliest_action(hit.at + hit.seconds, blocked)
            runs_at = min(back, earliest_action(seen + grace_s, blocked) + BOOT_S)
    return runs_at + work_s - done - submitted
