"""D10: the operator page in Debian's headless Chromium, served by uvicorn: a screenshot
and the rendered DOM of each page, the filter form, the drill-down into a meter."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
import uvicorn

from hil.broker import free_port
from hil.wait import wait_until_sync
from tests.conftest import missing
from tests.headend.operatorpage import app, seed_store

BROWSER_S = 60  # one chromium run at most (it is killed after)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        missing("chromium not installed: run `make chromium-present` (apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The operator router on a seeded store, served by uvicorn on a free local port."""
    url = f"sqlite:///{Path(tmp_path_factory.mktemp('site')) / 'headend.db'}"
    seed_store(url)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app(url), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_until_sync(lambda: server.started, 15, "uvicorn serving the operator page")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


class Browser:
    """Headless Chromium runs with a private profile; each is killed (its whole process
    group) if it outlives `BROWSER_S`."""

    def __init__(self, exe: str, home: Path) -> None:
        self.exe, self.home = exe, home
        self.n = 0

    def _run(self, *args: str) -> bytes:
        self.n += 1
        argv = [
            self.exe,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            f"--user-data-dir={self.home / f'profile{self.n}'}",
            "--window-size=1280,1600",
            *args,
        ]
        p = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            out, _ = p.communicate(timeout=BROWSER_S)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            raise
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        assert p.returncode == 0, f"chromium exited {p.returncode}"
        return out

    def dom(self, url: str) -> str:
        return self._run("--dump-dom", url).decode()

    def screenshot(self, url: str, name: str) -> Path:
        path = self.home / f"{name}.png"
        self._run(f"--screenshot={path}", url)
        assert path.read_bytes()[:8] == PNG
        return path


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Browser:
    return Browser(chromium, tmp_path)


def section(dom: str, ident: str) -> str:
    """The element with ``id=ident`` up to its table's end."""
    return dom.split(f'id="{ident}"', 1)[1].split("</table>", 1)[0]


@pytest.mark.req("D10", "D06", "H03")
@pytest.mark.timeout(120)
def test_d10_overview_renders_plots_and_tables(site: str, browser: Browser) -> None:
    url = f"{site}/operator/"
    dom = browser.dom(url)
    assert dom.count("<svg") == 2
    assert len(re.findall(r'<rect class="bar done"', dom)) == 2
    assert '<polyline class="line"' in dom
    for ident in ("aging", "trouble", "groups", "meters", "routing", "filter"):
        assert f'id="{ident}"' in dom
    assert browser.screenshot(url, "overview").stat().st_size > 10_000


@pytest.mark.req("D10")
@pytest.mark.timeout(120)
def test_d10_filter_form_and_drill_down_into_a_meter(site: str, browser: Browser) -> None:
    dom = browser.dom(f"{site}/operator/")
    form = dom.split('<form id="filter"', 1)[1].split("</form>", 1)[0]
    assert 'method="get"' in form and 'action="/operator/"' in form
    assert 'name="meter"' in form and 'name="group"' in form
    # what the browser sends when the operator picks a group and presses Filter
    query = urlencode({"meter": "", "group": "unscheduled"})
    filtered = browser.dom(f"{site}/operator/?{query}")
    rows = section(filtered, "meters")
    assert re.findall(r'href="(/operator/meters/\d+)"', rows) == ["/operator/meters/1003"]
    browser.screenshot(f"{site}/operator/?{query}", "filtered")
    # drill-down: follow the link the overview's table gives for meter 1002
    (href,) = [h for h in re.findall(r'href="([^"]+)"', section(dom, "meters")) if "1002" in h]
    meter = browser.dom(site + href)
    assert "<h1>Meter 1002</h1>" in meter
    assert meter.count("<svg") == 2 and '<polyline class="line"' in meter
    assert "<td>2024-03-05</td><td>96</td>" in section(meter, "missing")
    assert "power_down" in section(meter, "events")
    assert browser.screenshot(site + href, "meter").stat().st_size > 10_000


@pytest.mark.req("D10")
@pytest.mark.timeout(120)
def test_d10_unknown_meter_is_a_404_page(site: str, browser: Browser) -> None:
    dom = browser.dom(f"{site}/operator/meters/424242")
    assert 'id="error"' in dom and "no meter 424242" in dom
    browser.screenshot(f"{site}/operator/meters/424242", "unknown")
