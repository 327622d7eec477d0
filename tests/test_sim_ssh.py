"""Real sshd hosts: each running instance is an OpenSSH server on 127.0.0.1 where jobs really run."""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from vastevents.clock import ManualClock
from vastevents.sim import Simulator, sshhost
from vastevents.sim.sshhost import SshdMissing

pytestmark = pytest.mark.ssh
needs_openssh = pytest.mark.skipif(
    sshhost.find_sshd() is None or shutil.which("ssh") is None,
    reason="OpenSSH sshd and ssh are not installed (apt-get install openssh-server openssh-client)",
)

USER = "root" if os.geteuid() == 0 else getpass.getuser()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def keypair(tmp_path: Path) -> Path:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    return key


def _ssh(key: Path, port: int, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-p", str(port), "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5",
         f"{USER}@127.0.0.1", command],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@needs_openssh
def test_ssh_into_a_running_instance_runs_jobs_and_preempt_kills_them(keypair: Path) -> None:
    clock = ManualClock()
    with Simulator(clock=clock, ssh=True) as sim:
        auth = {"Authorization": f"Bearer {sim.api_key}"}
        added = httpx.post(f"{sim.url}/api/v0/ssh/", json={"ssh_key": keypair.with_suffix(".pub").read_text()},
                           headers=auth)  # fmt: skip
        assert added.status_code == 200
        instance_id = sim.create_instance(label="vastevents:ssh", pull=10, onstart="echo booted > onstart.txt",
                                          env={"JOB_NAME": "demo job"})  # fmt: skip
        clock.advance(30)
        row = httpx.get(f"{sim.url}/api/v0/instances/{instance_id}/", headers=auth).json()["instances"]
        assert row["actual_status"] == "running"
        port = row["ssh_port"]
        assert row["ssh_host"] == "127.0.0.1" and row["ports"]["22/tcp"][0]["HostPort"] == str(port)

        assert _ssh(keypair, port, "true").returncode == 0
        job = _ssh(keypair, port, 'echo "$JOB_NAME" > result.txt && pwd && cat onstart.txt && '
                                  "nohup sleep 600 >/dev/null 2>&1 &")  # fmt: skip
        assert job.returncode == 0, job.stderr
        home, booted = job.stdout.split()[:2]
        assert booted == "booted" and home.endswith(f"instance-{instance_id}/root")
        assert _ssh(keypair, port, "cat result.txt").stdout == "demo job\n"
        running = sim.ssh_pids()
        assert len(running) >= 2, "sshd and the background job"

        sim.preempt(instance_id)
        assert sim.ssh_pids() == []
        assert not any(_alive(pid) for pid in running), "preempt ends sshd and the job it ran"
        assert _ssh(keypair, port, "true").returncode == 255

        sim.apply("start", instance=instance_id)
        clock.advance(60)
        assert sim.instance(instance_id)["actual_status"] == "running"  # type: ignore[index]
        assert _ssh(keypair, port, "cat result.txt").stdout == "demo job\n", "the disk survives a stop"
        restarted = sim.ssh_pids()
    assert restarted and not any(_alive(pid) for pid in restarted), "stopping the simulator leaves no sshd"


@needs_openssh
def test_destroy_and_attached_keys(keypair: Path) -> None:
    clock = ManualClock()
    with Simulator(clock=clock, ssh=True) as sim:
        auth = {"Authorization": f"Bearer {sim.api_key}"}
        instance_id = sim.create_instance(label="x", pull=10)
        clock.advance(30)
        port = sim.instance(instance_id)["ssh_port"]  # type: ignore[index]
        assert _ssh(keypair, port, "true").returncode == 255, "no key on the account yet"
        public = keypair.with_suffix(".pub").read_text()
        attach = httpx.post(f"{sim.url}/api/v0/instances/{instance_id}/ssh/", json={"ssh_key": public}, headers=auth)
        assert attach.status_code == 200
        assert _ssh(keypair, port, "true").returncode == 0
        pids = sim.ssh_pids()
        assert httpx.delete(f"{sim.url}/api/v0/instances/{instance_id}/", headers=auth).status_code == 200
        assert sim.ssh_pids() == [] and not any(_alive(pid) for pid in pids)


def test_missing_sshd_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sshhost, "find_sshd", lambda: None)
    simulator = Simulator(clock=ManualClock(), ssh=True)
    with pytest.raises(SshdMissing, match="apt-get install openssh-server"):
        simulator.start()
    simulator.stop()


@needs_openssh
def test_a_restart_from_the_state_file_brings_running_hosts_back(keypair: Path, tmp_path: Path) -> None:
    clock = ManualClock()
    state = tmp_path / "state.json"
    with Simulator(clock=clock, ssh=True, state=state) as first:
        instance_id = first.create_instance(label="vastevents:kept", pull=10)
        clock.advance(30)
        port = first.instance(instance_id)["ssh_port"]  # type: ignore[index]
        auth = {"Authorization": f"Bearer {first.api_key}"}
        public = keypair.with_suffix(".pub").read_text()
        httpx.post(f"{first.url}/api/v0/instances/{instance_id}/ssh/", json={"ssh_key": public}, headers=auth)
        assert _ssh(keypair, port, "true").returncode == 0
    assert _ssh(keypair, port, "true").returncode == 255, "stopped with the simulator"
    with Simulator(clock=clock, ssh=True, state=state) as second:
        assert second.instance(instance_id)["ssh_port"] == port  # type: ignore[index]
        assert second.ssh_pids(), "the running instance has its sshd again"
        assert _ssh(keypair, port, "true").returncode == 0, "attached keys survive the restart"


@needs_openssh
def test_volumes_keep_files_across_instances_execute_sees_them_and_only_attached_keys_log_in(
    tmp_path: Path,
) -> None:
    account_key = _keypair(tmp_path / "account")
    later_key = _keypair(tmp_path / "later")
    with (
        Simulator(clock=ManualClock(), ssh=True) as sim,
        httpx.Client(base_url=sim.url, headers={"Authorization": f"Bearer {sim.api_key}"}, timeout=10) as client,
    ):
        client.post("/api/v0/ssh/", json={"ssh_key": account_key.with_suffix(".pub").read_text()})
        offer = client.post("/api/v0/bundles/", json={"num_gpus": {"eq": 1}, "order": [["dph_total", "asc"]]})
        ask = offer.json()["offers"][0]
        volume_offer = 90_000_000 + ask["machine_id"]
        info = {"create_new": True, "volume_id": volume_offer, "size": 5, "mount_path": "/root/ckpt"}
        first = client.put(f"/api/v0/asks/{ask['id']}/", json={"image": "i", "volume_info": info}).json()
        sim.advance(120)
        port = sim.instance(first["new_contract"])["ssh_port"]  # type: ignore[index]
        wrote = _ssh(account_key, port, "echo step-41 > ckpt/state.txt && mkdir scratch && ls")
        assert wrote.returncode == 0 and "ckpt" in wrote.stdout, wrote.stderr
        assert _ssh(later_key, port, "true").returncode != 0, "a key added after the create is not let in"
        attached = client.post(f"/api/v0/instances/{first['new_contract']}/ssh/",
                               json={"ssh_key": later_key.with_suffix(".pub").read_text()}).json()  # fmt: skip
        assert _ssh(later_key, port, "cat ckpt/state.txt").stdout == "step-41\n", "attached: it logs in"
        client.delete(f"/api/v0/instances/{first['new_contract']}/ssh/{attached['key_id']}/")
        assert _ssh(later_key, port, "true").returncode != 0, "detached: refused again"

        listing = client.put(f"/api/v0/instances/command/{first['new_contract']}/", json={"command": "ls -a root"})
        text = httpx.get(listing.json()["result_url"]).text
        assert "ckpt" in text and "scratch" in text
        for bad in ("ls /", "cat root/ckpt/state.txt", "rm -r ../x"):
            refused = client.put(f"/api/v0/instances/command/{first['new_contract']}/", json={"command": bad})
            assert refused.status_code == 400, bad

        volume_id = client.get("/api/v0/volumes/").json()["volumes"][0]["id"]
        client.delete(f"/api/v0/instances/{first['new_contract']}/")
        link = {"create_new": False, "volume_id": volume_id, "mount_path": "/root/resume"}
        second = client.put(f"/api/v0/asks/{_free_ask(client, ask['machine_id'])}/",
                            json={"image": "i", "volume_info": link}).json()  # fmt: skip
        sim.advance(120)
        port = sim.instance(second["new_contract"])["ssh_port"]  # type: ignore[index]
        resumed = _ssh(account_key, port, "cat resume/state.txt; ls")
        assert resumed.stdout.split() == ["step-41", "resume"], "the volume's files, not the old container's"
        client.put(f"/api/v0/instances/recycle/{second['new_contract']}/")
        sim.advance(120)
        assert _ssh(account_key, port, "cat resume/state.txt").stdout == "step-41\n", "a recycle keeps the volume"
        client.delete(f"/api/v0/instances/{second['new_contract']}/")
        assert client.delete("/api/v0/volumes/", params={"id": volume_id}).status_code == 200
        assert sim.instance_count() == 0


def _keypair(directory: Path) -> Path:
    directory.mkdir()
    key = directory / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    return key


def _free_ask(client: httpx.Client, machine_id: int) -> int:
    offers = client.post("/api/v0/bundles/", json={"machine_id": {"eq": machine_id}, "num_gpus": {"eq": 1}})
    return int(offers.json()["offers"][0]["id"])
