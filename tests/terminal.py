"""A command run on a real pseudo-terminal of a given size, and what a person would have seen on it.

The output goes through a VT100 emulator (pyte) with scrollback, so cursor movement, line erasing and
redrawing (rich's live status line) count as they do on a screen: `lines` is what scrolled by plus the last
screen, as text.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import termios
from dataclasses import dataclass

import pyte


@dataclass(frozen=True)
class Seen:
    code: int
    lines: list[str]
    colours: list[list[str]]
    """Each line's foreground colour per column ("default" where none was set)."""

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def colour_of(self, text: str) -> str:
        """The colour the first `text` on the screen was printed in."""
        for line, colours in zip(self.lines, self.colours, strict=True):
            if (column := line.find(text)) >= 0:
                return colours[column]
        raise AssertionError(f"{text!r} is not on the screen")


def run_on_terminal(args: list[str], *, env: dict[str, str], cwd: str, columns: int = 80, rows: int = 24,
                    timeout: float = 300.0, interrupt_at: str | None = None) -> Seen:  # fmt: skip
    """Run `args` with stdin, stdout and stderr on one `columns` x `rows` terminal until it exits; press Ctrl-C
    (SIGINT to it) once `interrupt_at` shows on the screen."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    screen = pyte.HistoryScreen(columns, rows, history=100_000)
    stream = pyte.ByteStream(screen)
    environment = {**env, "COLUMNS": str(columns), "LINES": str(rows), "TERM": "xterm-256color"}
    environment.pop("NO_COLOR", None)
    try:
        process = subprocess.Popen(args, stdin=secondary, stdout=secondary, stderr=secondary, env=environment,
                                   cwd=cwd, start_new_session=True)  # fmt: skip
        os.close(secondary)
        while True:
            ready, _, _ = select.select([primary], [], [], timeout)
            if not ready:
                process.kill()
                raise AssertionError(f"{args} printed nothing for {timeout} s")
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            stream.feed(chunk)
            if interrupt_at is not None and any(interrupt_at in line for line in screen.display):
                os.killpg(process.pid, signal.SIGINT)
                interrupt_at = None
        code = process.wait(timeout=timeout)
    finally:
        os.close(primary)
    rows = [*screen.history.top, *(screen.buffer[y] for y in range(rows))]
    chars = [[line[x] for x in range(columns)] for line in rows]
    return Seen(
        code,
        ["".join(char.data for char in line).rstrip() for line in chars],
        [[char.fg for char in line] for line in chars],
    )
