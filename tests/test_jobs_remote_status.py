"""``jobs_remote.status`` alone, on a scripted SSH edge: a process seen gone is looked for again before the job is
told it vanished (the job's command would be started a second time)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest

from vastevents import CommandResult, Context, SshError, SshTarget
from vastevents.jobspec import JobSpec
from vastevents_handlers import jobs_remote

TARGET = SshTarget("127.0.0.1", 2222)
SPEC = JobSpec(image="pytorch/pytorch", cmd="python train.py")


class ScriptedSsh:
    """Answers each ``run`` with the next of `answers` (an exception is raised), and counts the calls."""

    def __init__(self, answers: list[CommandResult | Exception]) -> None:
        self.answers: Iterator[CommandResult | Exception] = iter(answers)
        self.calls = 0

    async def run(self, target: SshTarget, command: str, *, timeout: float | None = None) -> CommandResult:
        self.calls += 1
        answer = next(self.answers)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _ctx(ssh: ScriptedSsh) -> Context:
    return cast(Context, SimpleNamespace(ssh=ssh))


GONE = CommandResult(0, "gone\n", "")
ALIVE = CommandResult(0, "alive\n", "")


async def test_a_process_seen_gone_by_a_session_cut_under_it_is_not_taken_for_gone() -> None:
    """The suite, now and then: the instance's SSH server stopped while a status check read the process's start
    time; the check answered ``gone`` and the job's command was started again, where SSH stayed down."""
    ssh = ScriptedSsh([GONE, SshError("cannot reach 127.0.0.1:2222")])
    with pytest.raises(SshError):
        await jobs_remote.status(_ctx(ssh), TARGET, SPEC, 4242)
    assert ssh.calls == 2


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ([GONE, ALIVE], None),
        ([GONE, GONE], (None, "the process ended without an exit code (killed, or the host restarted)")),
        ([ALIVE], None),
        ([CommandResult(0, "exit 3\n", "")], (3, None)),
    ],
    ids=["gone-then-alive", "gone-twice", "alive", "exited"],
)
async def test_status_reads_gone_only_when_two_sessions_agree(answers: list[Any], expected: Any) -> None:
    ssh = ScriptedSsh(answers)
    assert await jobs_remote.status(_ctx(ssh), TARGET, SPEC, 4242) == expected
    assert ssh.calls == len(answers)
