"""A local Vast.ai: the wire protocol on loopback, an accelerated lifecycle, scripted faults, real sshd hosts.

``from vastevents.sim import Simulator`` is the public surface (and :class:`VastSim`, what the ``vast_sim``
pytest fixture gives a test); the rest is private. docs/simulator.md describes all of it.

- Lifecycle: null (scheduling, 5 s) -> created (5 s) -> loading (the image pull, 60 s unless ``pull`` says)
  -> running; stop/start (15 s back through loading), reboot (20 s), destroy, contract ``end_date`` expiry.
  State is evaluated lazily from the clock on every request, so a ManualClock drives it completely, and
  ``Simulator.next_due()`` says when the next change is due (to step such a clock from one to the next).
- Faults, as scenario ``[[step]]`` actions (a file, or ``demo``: the built-in story) or ``POST /_sim/<action>``
  with a JSON body (same key as the API): ``preempt``/``outbid``, ``offline``/``online``/``flap`` (``duration``,
  ``count``), ``stuck_loading`` (``msg``),
  ``no_such_ask`` and ``create_error`` (``count``: the next creates), ``rate_limit``/``server_error``/``slow``
  (``duration``, ``status``, ``delay`` in wall seconds), ``gpu_broken``, ``disk_full``, ``vanish``, ``expire``
  (``after``), plus ``create``/``stop``/``start``/``reboot``/``destroy``/``label``. Instances are named by id,
  label, or label suffix (``job-1`` for ``vastevents:job-1``). ``GET /_sim/state`` shows everything;
  ``POST /_sim/advance {"seconds": n}`` moves a manual clock.
- Rate limits per endpoint class and client in simulated time (search 10/min, create 1/s, lists 20/s, others
  10/s; bursts allowed) answer 429 with ``Retry-After``; ``Simulator(rate_limits=False)`` turns them off.
- ``ssh=True``: each running instance is a real ``sshd`` on 127.0.0.1 running as the current user. As root
  ``ssh -p PORT root@127.0.0.1`` works as on Vast. As any other user the hosts work too, but only for that
  user: ``ssh -p PORT $USER@127.0.0.1`` logs in and ``root@`` is refused (sshd cannot switch users without
  root), so a tool that always logs in as root needs the simulator run as root; the user also needs a login
  shell (not ``nologin``). See :mod:`vastevents.sim.sshhost`.
"""

from __future__ import annotations

from vastevents.sim.fixture import VastSim
from vastevents.sim.simulator import Simulator

__all__ = ["Simulator", "VastSim"]
