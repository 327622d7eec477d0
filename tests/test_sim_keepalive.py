"""The simulator keeps connections alive (HTTP/1.1), so a client's pages really share one connection."""

from __future__ import annotations

import http.client
import json

from vastevents.sim import Simulator


def _connection(sim: Simulator) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(sim.host, sim.port, timeout=30)


def test_many_requests_errors_included_share_one_connection(sim: Simulator, api_key: str) -> None:
    for _ in range(3):
        sim.create_instance(label="vastevents:job")
    sim.advance(600)
    conn = _connection(sim)
    auth = {"Authorization": f"Bearer {api_key}"}
    try:
        conn.request("GET", "/api/v1/instances/?limit=1", headers=auth)
        first = conn.getresponse()
        page = json.loads(first.read())
        assert first.version == 11 and len(page["instances"]) == 1 and page["next_token"]
        sock = conn.sock
        # A 404, a 401, an admin route and a malformed body: each ends at its Content-Length, the next follows.
        for method, path, headers, body in [
            ("GET", "/nope", auth, None),
            ("GET", "/api/v1/instances/", {}, None),
            ("GET", "/_sim/state", auth, None),
            ("POST", "/api/v0/bundles/", {**auth, "Content-Type": "application/json"}, b"{not json"),
            ("GET", f"/api/v1/instances/?limit=1&after_token={page['next_token']}", auth, None),
        ]:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            assert int(response.getheader("Content-Length") or -1) == len(response.read())
            assert not response.will_close, path
        assert conn.sock is sock, "the server closed the connection between requests"
    finally:
        conn.close()


def test_an_unreadable_content_length_closes_that_connection(sim: Simulator, api_key: str) -> None:
    conn = _connection(sim)
    try:
        conn.putrequest("POST", "/api/v0/bundles/")
        conn.putheader("Authorization", f"Bearer {api_key}")
        conn.putheader("Content-Length", "many")
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 400 and "Content-Length" in json.loads(response.read())["msg"]
        assert response.will_close
    finally:
        conn.close()


def test_stop_ends_an_idle_kept_alive_connection(api_key: str) -> None:
    sim = Simulator(api_key=api_key).start()
    conn = _connection(sim)
    try:
        conn.request("GET", "/api/v0/users/current/", headers={"Authorization": f"Bearer {api_key}"})
        assert conn.getresponse().read()
        sim.stop()  # returns although the connection stays open on our side
        assert conn.sock is not None and conn.sock.recv(1) == b""  # the server closed its end
    finally:
        conn.close()
        sim.stop()
