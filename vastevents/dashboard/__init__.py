"""``vastevents dashboard``: a read-only web view of the store for the whole team (extra ``vastevents[dashboard]``).

Server-rendered pages (Starlette and Jinja2, escaped everywhere) that work without JavaScript, live updates by
Server-Sent Events, charts drawn as SVG on the server, a token on every request once one is configured.
"""

from __future__ import annotations

from vastevents.dashboard.app import create_app

__all__ = ["create_app"]
