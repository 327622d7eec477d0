"""The pytest plugin (entry point pytest11): other projects' tests get `vast_sim` and `vast_sim_ssh` by installing
vastevents. Each inner run is a pytest subprocess in a project of its own, which finds the plugin as theirs does.
(.ci/pytest-plugin-check proves the same from a fresh virtualenv that only pip-installs this checkout.)"""

from __future__ import annotations

import pytest
from sshkit import needs_openssh

pytest_plugins = ("pytester",)

# This environment's other test plugins (hypothesis alone takes 2 s to import) are no part of the check.
INNER = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:anyio", "-p", "no:asyncio", "-rs")

USING_IT = """
import httpx
import pytest


def test_rent_run_preempt(vast_sim):
    auth = {"Authorization": f"Bearer {vast_sim.api_key}"}
    offers = httpx.post(f"{vast_sim.url}/api/v0/bundles/", json={"num_gpus": {"eq": 1}}, headers=auth).json()
    created = httpx.put(f"{vast_sim.url}/api/v0/asks/{offers['offers'][0]['id']}/", json={"image": "x"},
                        headers=auth).json()
    assert vast_sim.state()["instances"][0]["actual_status"] is None, "time stands still until advanced"
    vast_sim.advance(120)
    assert vast_sim.state()["instances"][0]["actual_status"] == "running"
    vast_sim.inject("preempt", instance=created["new_contract"])
    assert vast_sim.state()["instances"][0]["actual_status"] == "exited"
    assert vast_sim.env == {"VAST_URL": vast_sim.url, "VAST_API_KEY": vast_sim.api_key}
    with pytest.raises(Exception, match="Unknown action"):
        vast_sim.inject("meteor")


@pytest.mark.vast_sim(scenario="demo", api_key="mine")
def test_a_scenario_by_marker(vast_sim):
    assert vast_sim.api_key == "mine" and len(vast_sim.state()["instances"]) == 6


@pytest.mark.vast_sim(speed=60)
def test_a_clock_of_its_own_cannot_be_advanced(vast_sim):
    with pytest.raises(Exception, match="manual clock"):
        vast_sim.advance(1)


@pytest.mark.vast_sim(colour="red")
def test_an_unknown_option_is_named(vast_sim):
    pass
"""


SSHD_MISSING = """
import pytest


@pytest.fixture
def no_sshd_here(monkeypatch):
    monkeypatch.setattr("vastevents.sim.sshhost.find_sshd", lambda: None)


@pytest.fixture
def ci(monkeypatch):
    monkeypatch.setenv("CI", "true")


def test_sshd_missing(no_sshd_here, vast_sim_ssh):
    pass


def test_sshd_missing_under_ci(no_sshd_here, ci, vast_sim_ssh):
    pass
"""


def test_vast_sim_works_in_another_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rent, advance, inject; options by marker; vast_sim_ssh skips with a hint where sshd is missing (stood in for
    by a patched lookup) and fails under CI=true."""
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_using_it=USING_IT, test_without_sshd=SSHD_MISSING)
    result = pytester.runpytest_subprocess(*INNER)
    result.assert_outcomes(passed=3, skipped=1, errors=2)
    result.stdout.fnmatch_lines_random([
        "*unknown option(s) colour*",
        "*SKIPPED*vast_sim_ssh needs OpenSSH*apt-get install openssh-server*",
        "*CI: vast_sim_ssh needs OpenSSH*",
    ])  # fmt: skip


USING_SSH = """
import os
import subprocess


def test_log_in_to_a_rented_instance(vast_sim_ssh, tmp_path):
    import httpx
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    auth = {"Authorization": f"Bearer {vast_sim_ssh.api_key}"}
    url = vast_sim_ssh.url
    httpx.post(f"{url}/api/v0/ssh/", json={"ssh_key": key.with_suffix(".pub").read_text()}, headers=auth)
    offer = httpx.post(f"{url}/api/v0/bundles/", json={"num_gpus": {"eq": 1}}, headers=auth).json()["offers"][0]
    created = httpx.put(f"{url}/api/v0/asks/{offer['id']}/", json={"image": "x"}, headers=auth).json()
    vast_sim_ssh.advance(120)
    row = httpx.get(f"{url}/api/v0/instances/{created['new_contract']}/", headers=auth).json()["instances"]
    user = "root" if os.geteuid() == 0 else os.environ.get("USER") or __import__("getpass").getuser()
    done = subprocess.run(["ssh", "-p", str(row["ssh_port"]), "-i", str(key), "-o", "BatchMode=yes",
                           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                           f"{user}@127.0.0.1", "echo hello from $HOME"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.startswith("hello from"), done.stderr
"""


@pytest.mark.ssh
@needs_openssh
def test_vast_sim_ssh_serves_real_logins_and_stops_its_sshd(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(USING_SSH)
    pytester.runpytest_subprocess(*INNER).assert_outcomes(passed=1)
