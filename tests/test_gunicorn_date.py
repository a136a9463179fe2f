"""gunicorn keeps an application's Date (a proxied answer's: the origin's) and adds its own otherwise."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from launcher.processes import ROOT, free_port, http_ok, wait_until

ORIGIN_DATE = "Mon, 01 Dec 2025 00:00:00 GMT"


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    headers = [("Content-Type", "text/plain")]
    if environ["PATH_INFO"] == "/dated":
        headers.append(("Date", ORIGIN_DATE))
    start_response("200 OK", headers)
    return [b"ok"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    conf = tmp_path / "conf.py"
    conf.write_text("from web.gunicorn_date import keep_application_date\nkeep_application_date()\n")
    port = free_port()
    bind = f"127.0.0.1:{port}"
    argv = [sys.executable, "-m", "gunicorn", "-c", str(conf), "-b", bind, "tests.test_gunicorn_date:app"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(url + "/plain"), 30, "gunicorn")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_an_application_date_is_sent_alone_and_gunicorn_dates_the_others(server: str) -> None:
    dated = requests.get(server + "/dated", timeout=5)
    assert dated.headers["Date"] == ORIGIN_DATE  # one Date line, the application's
    undated = requests.get(server + "/plain", timeout=5)
    assert undated.headers["Date"].endswith(" GMT") and undated.headers["Date"] != ORIGIN_DATE
