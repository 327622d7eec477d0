"""The apprise notifier end to end, through Apprise's own json:// service against a real local endpoint."""

from __future__ import annotations

import sys

import pytest
from slack_sink import SlackSink, destroy_all, failures, running

from vastevents import Outbox
from vastevents.config import parse_config
from vastevents.errors import ConfigError
from vastevents.plugins import load_handlers
from vastevents.sim import Simulator
from vastevents.store import SqlStore

APPRISE = '[handlers.chat]\nuse = "apprise"\npace = 0\n'


@pytest.fixture
def urls(sink: SlackSink, monkeypatch: pytest.MonkeyPatch) -> SlackSink:
    pytest.importorskip("apprise")
    monkeypatch.setenv("VASTEVENTS_APPRISE_URLS", f"json://127.0.0.1:{sink.port}/hooks/APPRISESECRET")
    return sink


async def test_a_preemption_goes_out_once_through_apprise_and_an_outage_keeps_it(
    sim: Simulator, api_key: str, urls: SlackSink, store: SqlStore
) -> None:
    instance_id = sim.create_instance(label="vastevents:train", bid=True, gpu_name="RTX 4090")
    sim.advance(600)
    async with running(sim, api_key, store, APPRISE) as runtime:
        await runtime.poll_once()
        urls.failing = 500
        sim.preempt(instance_id)
        sim.advance(15)
        await runtime.poll_once()
        (row,) = runtime.store.repository(Outbox).pending("chat")
        assert row.last_error == "Apprise VASTEVENTS_APPRISE_URLS: not delivered to every URL"
        urls.failing = None
        for _ in range(2):
            sim.advance(600)
            await runtime.poll_once()
        assert failures(runtime) == []
    (post,) = urls.posts
    assert post.path == "/hooks/APPRISESECRET"
    assert post.body["title"] == "vastevents" and post.body["type"] == "failure"
    assert f"Instance {instance_id} (vastevents:train, 1x RTX 4090): preempted" in post.body["message"]
    await destroy_all(sim, api_key)


def test_an_unusable_url_is_a_config_error_that_does_not_show_it(
    urls: SlackSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VASTEVENTS_APPRISE_URLS", "json://127.0.0.1:1/ok nosuchscheme://TOKEN123SECRET")
    with pytest.raises(ConfigError, match=r"handlers\.chat.*URL #2 of VASTEVENTS_APPRISE_URLS") as error:
        load_handlers(parse_config(APPRISE))
    assert "TOKEN123SECRET" not in str(error.value)


def test_without_apprise_installed_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VASTEVENTS_APPRISE_URLS", "json://127.0.0.1:1/")
    monkeypatch.setitem(sys.modules, "apprise", None)  # what an import sees when the package is absent
    with pytest.raises(ConfigError, match=r"handlers\.chat.*pip install 'vastevents\[apprise\]'"):
        load_handlers(parse_config(APPRISE))
