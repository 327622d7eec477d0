"""P5: tar-stream transfers over SSH: the paramiko edge against OpenSSH's ``tar | ssh``, 100 MB over loopback.

Run: ``python bench/bench_transfer.py [--mb 100] [--repeat 3] [--quick] [--json PATH]``. A simulator instance
backed by a real sshd on 127.0.0.1 is the host; each case moves one directory holding a compressible (text-like)
or a random file, up (local → host) and down (host → local), and prints MB/s for the edge's default (tar streamed
through OpenSSH's ``ssh``, host key checked against the one paramiko recorded), paramiko's own channel (the
fallback without ``ssh``) and plain ``tar | ssh``.
The goal: the default reaches at least 0.9x the better of paramiko and ``tar | ssh`` in every case.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_json

from vastevents.clock import ManualClock
from vastevents.ports import SshTarget
from vastevents.sim import Simulator
from vastevents.ssh import ParamikoSsh, SshSettings

USER = "root" if os.geteuid() == 0 else getpass.getuser()
GOAL = 0.9
"""The default's speed at least this share of the better of paramiko and ``tar | ssh``, in every case."""


def _payload(directory: Path, kind: str, size: int) -> Path:
    source = directory / f"src-{kind}"
    source.mkdir()
    if kind == "random":
        data = os.urandom(size)
    else:
        line = b"epoch 0001 step 000100 loss 0.123456 lr 0.000300 grad_norm 1.2345\n"
        data = (line * (size // len(line) + 1))[:size]
    (source / "data.bin").write_bytes(data)
    return source


def _best(repeat: int, work: Callable[[], None]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def _openssh(key: Path, port: int, known: Path) -> list[str]:
    return ["ssh", "-p", str(port), "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", f"UserKnownHostsFile={known}", "-o", "LogLevel=ERROR", f"{USER}@127.0.0.1"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 10 MB, once")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    if args.quick:
        args.mb, args.repeat = 10, 1
    size = args.mb * 1_000_000
    cases_done: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp_name, Simulator(clock=ManualClock(), ssh=True) as sim:
        tmp = Path(tmp_name)
        key = tmp / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        auth = {"Authorization": f"Bearer {sim.api_key}"}
        httpx.post(f"{sim.url}/api/v0/ssh/", json={"ssh_key": key.with_suffix(".pub").read_text()}, headers=auth)
        instance = sim.create_instance(label="vastevents:bench", pull=10)
        sim.advance(30)
        port = int(sim.instance(instance)["ssh_port"])  # type: ignore[index]
        target = SshTarget("127.0.0.1", port, USER, instance)
        edge = ParamikoSsh(tmp / "known_hosts", key_file=key)
        pure = ParamikoSsh(tmp / "known_hosts", key_file=key, settings=SshSettings(openssh_transfers=False))
        ssh = _openssh(key, port, tmp / "known_openssh")
        try:
            asyncio.run(edge.run(target, "true"))
            print(f"{args.mb} MB, best of {args.repeat}     default MB/s  paramiko MB/s  tar|ssh MB/s  default/best")
            for kind in ("compressible", "random"):
                source = _payload(tmp, kind, size)
                remote = f"bench-{kind}"

                def up_default(source: Path = source, remote: str = remote) -> None:
                    asyncio.run(edge.upload(target, source, remote))

                def up_paramiko(source: Path = source, remote: str = remote) -> None:
                    asyncio.run(pure.upload(target, source, remote))

                def up_openssh(source: Path = source, remote: str = remote) -> None:
                    tar = subprocess.Popen(["tar", "-c", "-f", "-", "-C", str(source), "."], stdout=subprocess.PIPE)
                    q = shlex.quote(remote)
                    subprocess.run([*ssh, f"mkdir -p {q} && tar -x -f - -C {q}"], stdin=tar.stdout, check=True)
                    tar.wait()

                def down_default(remote: str = remote, kind: str = kind) -> None:
                    out = tmp / f"down-d-{kind}"
                    shutil.rmtree(out, ignore_errors=True)
                    asyncio.run(edge.download(target, f"{remote}/data.bin", out))

                def down_paramiko(remote: str = remote, kind: str = kind) -> None:
                    out = tmp / f"down-p-{kind}"
                    shutil.rmtree(out, ignore_errors=True)
                    asyncio.run(pure.download(target, f"{remote}/data.bin", out))

                def down_openssh(remote: str = remote, kind: str = kind) -> None:
                    out = tmp / f"down-o-{kind}"
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir()
                    remote_tar = subprocess.Popen([*ssh, f"tar -c -f - -C {shlex.quote(remote)} data.bin"],
                                                  stdout=subprocess.PIPE)  # fmt: skip
                    subprocess.run(["tar", "-x", "-f", "-", "-C", str(out)], stdin=remote_tar.stdout, check=True)
                    remote_tar.wait()

                cases = (
                    ("up", up_default, up_paramiko, up_openssh),
                    ("down", down_default, down_paramiko, down_openssh),
                )
                for direction, default, paramiko_only, openssh in cases:
                    d, p, o = (_best(args.repeat, work) for work in (default, paramiko_only, openssh))
                    mb = args.mb
                    best = min(p, o)
                    print(f"{direction:<5}{kind:<20}{mb / d:>10.0f}{mb / p:>15.0f}{mb / o:>14.0f}{best / d:>12.2f}x")
                    cases_done.append({"case": f"{direction} {kind}", "default": mb / d, "paramiko": mb / p,
                                       "openssh": mb / o, "default_vs_best": best / d})  # fmt: skip
        finally:
            edge.close()
            pure.close()
            sim.apply("destroy", instance=instance)
    write_json(args.json, "transfer", {"mb": args.mb, "repeat": args.repeat, "cases": cases_done, "goal": GOAL})


if __name__ == "__main__":
    main()
