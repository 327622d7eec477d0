"""What the runbooks do by hand, one function at a time: job labels named after the account, the SSH key attached
to what is rented."""

from __future__ import annotations

import logging

import pytest

from vastevents import ApiError, Offer
from vastevents.config import parse_config
from vastevents.labels import FALLBACK_NAME, account_name, job_label_prefix, prefix_configured
from vastevents.models import Rental
from vastevents.testing import FakeCloud, Harness

# --- labels ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("account", "name"),
    [
        ({"nickname": "Ada L", "username": "ada2", "email": "ada@example.com"}, "ada-l"),
        ({"username": "grace.h", "email": "gh@example.com"}, "grace.h"),
        ({"username": "", "email": "Alan.Turing+gpu@example.com"}, "alan.turing-gpu"),
        ({"username": ":::", "email": "@example.com"}, FALLBACK_NAME),
        ({}, FALLBACK_NAME),
    ],
)
def test_the_account_is_named_by_nickname_then_email_local_part_then_vast_user(
    account: dict[str, str], name: str
) -> None:
    assert account_name(account) == name
    assert ":" not in account_name(account), "labels split on ':'"


async def test_without_a_configured_prefix_a_jobs_label_names_the_account_and_stays_owned() -> None:
    cloud = FakeCloud()
    cloud.user = {"username": "ada", "email": "ada@example.com"}
    default = parse_config("")
    assert not prefix_configured(default) and default.vast.label_prefix == "vastevents"
    prefix = await job_label_prefix(default, cloud)
    assert prefix == "vastevents-ada"
    configured = parse_config('[vast]\nlabel_prefix = "vastevents"\n')
    assert prefix_configured(configured) and await job_label_prefix(configured, cloud) == "vastevents"
    team = parse_config('[vast]\nlabel_prefix = "lab"\n')
    assert await job_label_prefix(team, cloud) == "lab"
    assert await job_label_prefix(default, None) == f"vastevents-{FALLBACK_NAME}", "no API key where it is submitted"
    async with Harness(cloud=cloud) as harness:
        owns = harness.runtime.actions.owns_label
        assert owns(f"{prefix}:job-3") and owns("vastevents:job-1"), "old and new job labels are both owned"
        assert not owns("ada-notebook"), "nothing a person labelled by hand becomes owned"


# --- what is rented gets the watcher's SSH key --------------------------------------------------------------


def _cloud() -> FakeCloud:
    cloud = FakeCloud()
    cloud.offers = [
        Offer(id=1, machine_id=10, dph_total=0.2),
        Offer(id=2, machine_id=20, dph_total=0.3),
        Offer(id=3, machine_id=30, dph_total=0.4),
    ]
    return cloud


async def test_every_instance_a_watcher_rents_gets_its_ssh_key_attached(caplog: pytest.LogCaptureFixture) -> None:
    cloud = _cloud()
    async with Harness(cloud=cloud) as harness:
        context = harness.context.bound("jobs", ())
        first = await context.create(Rental(1, image="img", disk=10))
        assert cloud.attached == {}, "an edge without a key attaches nothing"
        harness.ssh.key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample watcher@host"
        second = await context.create(Rental(2, image="img", disk=10))
        assert cloud.attached == {second: [harness.ssh.key]} and first not in cloud.attached

        async def refuse(instance_id: int, public_key: str) -> dict[str, object]:
            raise ApiError("The Vast API refused POST /instances/x/ssh/: no")

        cloud.attach_ssh_key = refuse  # type: ignore[method-assign]
        with caplog.at_level(logging.WARNING):
            third = await context.create(Rental(3, image="img", disk=10))
        assert third in cloud.instances, "rented all the same: the account's keys may let it in"
        assert "could not attach the SSH key" in caplog.text
