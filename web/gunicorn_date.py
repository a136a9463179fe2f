"""gunicorn writes its own ``Date`` on every response and drops the application's: a proxied
answer from the cache must keep the origin's Date (RFC 9110 §6.6.1: the Date is when the origin
generated the message; RFC 9111 §4.2.3 ages a response from it, and the HTTP cache test suite's
``other-date-update`` holds caches to it). ``keep_application_date`` makes gunicorn pass an
application's Date through and add its own only when the application sent none: the key-value
routes send none, so for them nothing changes.
"""

from __future__ import annotations

from typing import Any


def keep_application_date() -> None:
    """Patch gunicorn (once, in the master, before it forks: web/gunicorn.conf.py)."""
    from gunicorn import util
    from gunicorn.http import wsgi

    if getattr(wsgi.Response, "_herdless_keeps_date", False):
        return
    util.hop_headers.discard("date")
    default_headers = wsgi.Response.default_headers

    def without_own_date_when_the_app_sent_one(self: Any) -> list[str]:
        lines: list[str] = default_headers(self)
        if any(name.lower() == "date" for name, _ in self.headers):
            return [line for line in lines if not line.lower().startswith("date:")]
        return lines

    wsgi.Response.default_headers = without_own_date_when_the_app_sent_one
    wsgi.Response._herdless_keeps_date = True
