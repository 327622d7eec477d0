"""The dashboard through Starlette's TestClient over a real store on both backends: every route, every bad
input, escaping, the token, secrets never shown, and the store left untouched."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from stores import Opener
from typer.testing import CliRunner

from vastevents.cli import app as cli
from vastevents.config import Config, parse_config
from vastevents.dashboard import create_app
from vastevents.diff import observe
from vastevents.events import Event
from vastevents.models import Instance
from vastevents.sim import Simulator
from vastevents.store import Jobs, SqlStore
from vastevents.store.hosts import Hosts
from vastevents.store.ledger import Ledger
from vastevents.store.outbox import Outbox
from vastevents.store.team import TeamMembers

NOW = datetime.now(UTC).replace(microsecond=0)
T0 = NOW - timedelta(hours=3)
EVIL = "<script>alert('x')</script>"
TOKEN = "a-dashboard-token-0123456789"
CONFIG = '[handlers.billing]\nuse = "billing"\nbudget_usd = 50.0\ndaily_budget_usd = 10.0\n'


def instance(instance_id: int, status: str, label: str, **more: object) -> Instance:
    fields = {"id": instance_id, "actual_status": status, "label": label, "dph_total": 0.5, "gpu_name": "RTX 4090"}
    return Instance.model_validate({**fields, **more})


def fill(store: SqlStore) -> None:
    """Three instances (one labelled with a script tag and carrying secrets), 120 events, a job, a ledger,
    struck hosts and a pending notification."""
    rows = [
        instance(1, "running", "vastevents:job-1", machine_id=7),
        instance(2, "loading", EVIL, jupyter_token="jt-secret-value", extra_env=[["HF_TOKEN", "hf-secret"]]),
        instance(3, "running", "someone-else"),
    ]
    previous = store.load_snapshot()
    snapshot, events = observe(previous, rows, T0)
    store.commit(previous, snapshot, events)
    store.append([Event(name="host_flap", instance_id=3, at=T0 + timedelta(seconds=n)) for n in range(117)])
    jobs = store.repository(Jobs)
    job = jobs.submit({"image": "python:3.11"}, [], "vastevents", T0)
    jobs.update(job.id, status="running", instance_id=1, started_at=T0, gpu_name="RTX 4090", cost_usd=1.25)
    ledger = store.repository(Ledger)
    with store.db.transaction() as conn:
        for row in rows:
            ledger.observe(conn, row.id, row, T0)
    hosts = store.repository(Hosts)
    for machine in range(1, 4):
        hosts.strike(f"s{machine}", machine, 100 + machine, f"preempted {EVIL}", T0, threshold=1, ttl=86400)
    with store.db.transaction() as conn:
        store.repository(Outbox).queue(conn, handler="slack", key="k", channel="#a", payload={}, created_at=T0)
    roster = store.repository(TeamMembers)
    roster.seen("gpu-box:4242", "leader", datetime.now(UTC))
    roster.seen("laptop:77", "follower", T0)


@pytest.fixture
def filled(opener: Opener) -> Opener:
    fill(opener())
    return opener


def client_for(opener: Opener, *, token: str | None = None, api_key: str | None = None) -> TestClient:
    config: Config = parse_config(CONFIG)
    application = create_app(config, opener(read_only=True).db, token=token, api_key=api_key)
    return TestClient(application, follow_redirects=False)


@pytest.fixture
def client(filled: Opener) -> Iterator[TestClient]:
    with client_for(filled) as client:
        yield client


def test_the_overview_counts_instances_by_state_jobs_watchers_spend_and_backlog(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    html = page.text
    assert re.search(r'id="instance-count">3<', html)
    assert re.search(r'data-state="running">2<', html) and re.search(r'data-state="loading">1<', html)
    assert re.search(r'data-job-status="running">1<', html)
    assert "$1.00/h" in html and "$0.50/h on owned" in html  # two running at $0.50/h; loading bills storage: none
    assert "slack: <b>1</b> to send" in html
    assert "of $50.00 total budget" in html and "daily budget" in html
    assert "#120" not in html and ">120<" in html  # the newest event is listed
    assert '<li class="alive">gpu-box:4242: leader since' in html
    assert '<li class="gone">laptop:77: follower since' in html and "no watcher has been heard" not in html


def test_the_overview_says_when_no_watcher_was_heard_from(opener: Opener) -> None:
    opener().append([Event(name="appeared", instance_id=1, at=T0)])
    with client_for(opener) as client:
        html = client.get("/").text
    assert 'id="no-watcher">no watcher has been heard from in the last 45 s: start `vastevents watch`' in html


def test_every_page_renders(client: TestClient) -> None:
    for path in ("/", "/jobs", "/jobs/1", "/events", "/cost", "/cost?by=instance", "/cost?by=job", "/hosts"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html")
        assert "content-security-policy" in response.headers and response.headers["x-frame-options"] == "DENY"
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["last_event_id"] == 120


def test_jobs_and_a_job_page(client: TestClient) -> None:
    jobs = client.get("/jobs").text
    assert 'href="/jobs/1"' in jobs and "vastevents:job-1" in jobs and "$1.25" in jobs
    job = client.get("/jobs/1").text
    assert "Job 1" in job and "running" in job and "appeared" in job  # its instance's timeline
    assert "no log downloaded yet" in job
    assert client.get("/jobs/99").status_code == 404


def test_events_are_paginated_newest_first_and_filtered(client: TestClient) -> None:
    first = client.get("/events").text
    assert first.count('<tr class="event-') == 50 and 'rel="next" href="?page=2"' in first
    last = client.get("/events?page=3").text
    assert last.count('<tr class="event-') == 20 and 'rel="next"' not in last
    appeared = client.get("/events?name=appeared").text
    assert appeared.count('<tr class="event-appeared"') == 3 and "event-host_flap" not in appeared
    one = client.get("/events?instance=2").text
    assert one.count('<tr class="event-') == 1
    since, until = (T0 + timedelta(seconds=10)).isoformat(), (T0 + timedelta(seconds=20)).isoformat()
    window = client.get("/events", params={"since": since, "until": until})
    assert window.status_code == 200 and window.text.count('<tr class="event-host_flap"') == 10
    assert 'name="since" value="' in window.text  # the filter form keeps what was asked
    assert client.get("/events?name=appeared&page=2").text.count('<tr class="event-') == 0


def test_the_cost_chart_draws_a_bar_per_day_and_per_instance_without_vasts_charges(client: TestClient) -> None:
    by_day = client.get("/cost").text
    bars = re.findall(r'<rect class="bar"[^>]*data-value="([0-9.e-]+)"', by_day)
    assert len(bars) >= 1 and any(float(value) > 0 for value in bars)
    assert "no Vast API key on this machine" in by_day
    by_instance = client.get("/cost?by=instance").text
    labels = re.findall(r'<rect class="bar"[^>]*data-label="([^"]*)"', by_instance)
    assert sorted(labels) == ["1", "2", "3"]


def test_hosts_list_their_strikes(client: TestClient) -> None:
    html = client.get("/hosts").text
    assert html.count("preempted &lt;script&gt;") == 3 and "<script>alert" not in html


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/?x=1", "unknown parameter 'x'"),
        ("/jobs?page=0", "page='0': expected a page number"),
        ("/jobs?page=abc", "page='abc': expected a whole number"),
        ("/jobs?page=1&page=2", "parameter page is given 2 times"),
        ("/jobs/abc", "job id='abc': expected a whole number"),
        ("/jobs/-1", "job id='-1': expected a whole number"),
        ("/events?instance=x", "instance='x': expected a whole number"),
        ("/events?name=%3Cscript%3E", "name='<script>': expected an event name"),
        ("/events?since=yesterday", "since='yesterday': expected a date"),
        ("/events?since=2026-02-01&until=2026-01-01", "since must be before until"),
        ("/events?page=99999999999999999999", "page="),
        ("/cost?by=week", "by='week': expected one of day, instance, job"),
        ("/cost?since=2020-01-01&until=2026-01-01", "at most 400 days"),
        ("/cost?until=not-a-date", "until='not-a-date'"),
        ("/hosts?page=-2", "page='-2'"),
        ("/healthz?verbose=1", "unknown parameter 'verbose'"),
        ("/stream?since=1", "unknown parameter 'since'"),
    ],
)
def test_a_bad_parameter_is_a_400_with_one_line(client: TestClient, path: str, message: str) -> None:
    response = client.get(path)
    assert response.status_code == 400, path
    assert response.text.count("\n") == 1 and message in response.text
    assert "Traceback" not in response.text


def test_a_bad_last_event_id_is_a_400(client: TestClient) -> None:
    response = client.get("/stream", headers={"Last-Event-ID": "abc"})
    assert response.status_code == 400 and "Last-Event-ID" in response.text


def test_a_script_label_is_text_and_secret_fields_are_masked(client: TestClient) -> None:
    for path in ("/", "/events", "/events?instance=2", "/cost?by=instance"):
        html = client.get(path).text
        assert "<script>alert" not in html, path
        assert re.findall(r"<script\b[^>]*>", html) == ['<script src="/static/live.js">'], path
    events = client.get("/events?instance=2").text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in events
    assert "jt-secret-value" not in events and "hf-secret" not in events and "jupyter_token" in events


def test_the_store_is_read_only_and_left_as_it_was(filled: Opener, client: TestClient) -> None:
    store = filled()
    before = store.db.query("SELECT COUNT(*), MAX(id) FROM events")
    for path in ("/", "/jobs", "/jobs/1", "/events", "/cost", "/hosts", "/healthz"):
        client.get(path)
    assert store.db.query("SELECT COUNT(*), MAX(id) FROM events") == before


def test_a_token_is_needed_on_every_route_and_a_login_sets_an_httponly_cookie(filled: Opener) -> None:
    with client_for(filled, token=TOKEN) as client:
        for path in ("/", "/jobs", "/jobs/1", "/events", "/cost", "/hosts", "/healthz", "/stream", "/static/live.js"):
            refused = client.get(path)
            assert refused.status_code == 401, path
            assert '<form method="post" action="/login">' in refused.text and TOKEN not in refused.text
        assert client.get("/", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
        assert client.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        client.cookies.set("vastevents_dashboard", TOKEN)
        assert client.get("/").status_code == 401  # the cookie holds a value derived from the token, not the token
        client.cookies.clear()

        wrong = client.post("/login", data={"token": "nope", "next": "/jobs"})
        assert wrong.status_code == 401 and "not the one" in wrong.text and "set-cookie" not in wrong.headers
        right = client.post("/login", data={"token": TOKEN, "next": "/events?name=appeared"})
        assert right.status_code == 303 and right.headers["location"] == "/events?name=appeared"
        cookie = right.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
        assert client.get("/jobs").status_code == 200  # the client keeps the cookie
        elsewhere = client.post("/login", data={"token": TOKEN, "next": "//evil.example/"})
        assert elsewhere.headers["location"] == "/"
        form = {"content-type": "application/x-www-form-urlencoded"}
        assert client.post("/login", content=b"token=" + b"x" * 5000, headers=form).status_code == 413


def test_an_api_key_is_never_shown(filled: Opener) -> None:
    key = "vast-api-key-never-shown-42"
    with client_for(filled, api_key=key) as client:
        for path in ("/", "/events", "/jobs/1", "/hosts", "/healthz"):
            assert key not in client.get(path).text


def test_vasts_charges_beside_the_ledger_and_ghost_billing_in_red(tmp_path: Path, sim: Simulator, api_key: str) -> None:
    """With an API key the cost page reads the simulator's charges: an instance charged that the list no longer
    shows and the ledger never saw is ghost billing."""
    opener = Opener(tmp_path / "state.db")
    store = opener()
    seen = sim.create_instance(label="vastevents:seen")
    ghost = sim.create_instance(label="vastevents:hidden")
    sim.advance(3600)
    ledger = store.repository(Ledger)
    now = sim.clock.now()
    with store.db.transaction() as conn:
        ledger.observe(conn, seen, instance(seen, "running", "vastevents:seen"), now - timedelta(hours=1))
    sim.vanish(ghost)
    config = parse_config(f'[vast]\nurl = "{sim.url}"\n')
    since = (now - timedelta(days=1)).date().isoformat()
    with TestClient(create_app(config, opener(read_only=True).db, api_key=api_key)) as client:
        html = client.get(f"/cost?by=instance&since={since}").text
    opener.close()
    assert "Vast charged" in html and "no Vast API key" not in html
    assert re.search(rf'<p class="ghost" role="alert">GHOST BILLING: instance {ghost}: charged \$', html)
    assert re.search(rf'<tr class="ghost">\s*<td><a href="/events\?instance={ghost}">', html)
    assert api_key not in html


@pytest.mark.parametrize(
    ("config", "args", "env", "message"),
    [
        ("", ["--listen", "0.0.0.0:0"], {}, "not a loopback address, needs a token"),
        ('[dashboard]\nlisten = "0.0.0.0:0"\n', [], {}, "not a loopback address, needs a token"),
        ('[dashboard]\ntoken_env = "DASH_TOKEN"\n', [], {}, "token_env names $DASH_TOKEN, which is not set"),
        ('[dashboard]\ntoken_env = "DASH_TOKEN"\n', [], {"DASH_TOKEN": "short"}, "shorter than 16 characters"),
        ("", ["--listen", "nowhere"], {}, "--listen 'nowhere' is not HOST:PORT"),
        ("[dashboard]\nlisten = 8780\n", [], {}, "dashboard.listen: Input should be a valid string"),
        ("", [], {}, "no state file at"),
    ],
)
def test_the_command_refuses_what_it_cannot_serve_safely_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str, args: list[str], env: dict[str, str], message: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[store]\npath = "{tmp_path / "none" / "state.db"}"\n' + config)
    monkeypatch.delenv("VASTEVENTS_STORE_URL", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli, ["dashboard", "--config", str(path), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "none").exists()


def test_a_jobs_downloaded_log_tail_is_shown_escaped_and_redacted(opener: Opener, tmp_path: Path) -> None:
    store = opener()
    jobs = store.repository(Jobs)
    job = jobs.submit({"image": "python:3.11"}, [], "vastevents", T0)
    results = tmp_path / "results" / f"job-{job.id}"
    results.mkdir(parents=True)
    (results / "job.log").write_text("x" * 20_000 + "\nepoch 3 <b>done</b> Bearer sk-live-0123456789\n")
    jobs.update(job.id, status="finished", results_dir=str(results), exit_code=0)
    with client_for(opener) as client:
        html = client.get(f"/jobs/{job.id}").text
    assert "epoch 3 &lt;b&gt;done&lt;/b&gt; Bearer ***" in html and "sk-live" not in html
    assert f"the last 16384 bytes of {results / 'job.log'}" in html
    assert "x" * 16_000 in html and "x" * 16_400 not in html  # only the tail: 16 KiB of the 20 KiB log
