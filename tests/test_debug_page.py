"""The live HTML page at the debug endpoint's root, in a real headless Chromium (Debian's):
the stalled row appears, its stack opens on demand, a hostile name renders as text, trace
ids link through the template, and the row goes when the stream ends, without a reload."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
WAIT_S = 60
HOSTILE = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
TRACE_URL = "http://jaeger.example:16686/trace/{trace_id}"

# A process with one stream named HOSTILE, stalled inside a trace, and one healthy
# stream; it prints its URL, ends the stalled stream on its first input line and exits
# on the second.
TARGET = textwrap.dedent(
    """
    import asyncio, sys, time
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    import thunkscope

    async def stuck_backend(release):
        yield "first"
        await release.wait()

    async def main():
        trace.set_tracer_provider(TracerProvider())
        thunkscope.configure(trace_url=sys.argv[2], log_format=None, endpoint="http://127.0.0.1:9")
        release = asyncio.Event()
        with trace.get_tracer("page-test").start_as_current_span("request"):
            task = asyncio.create_task(thunkscope.send_to_queue(
                stuck_backend(release), asyncio.Queue(), name=sys.argv[1], stall_after=0.05))
        deadline = time.monotonic() + 60
        while [s["state"] for s in thunkscope.inflight()] != ["stalled"]:
            assert time.monotonic() < deadline, thunkscope.inflight()
            await asyncio.sleep(0.01)
        server = thunkscope.serve_debug()
        print(server.url, flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        release.set()
        await task
        print("ended", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        server.close()

    asyncio.run(main())
    """
)


@pytest.fixture
def target() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """The target process and its debug URL; its output is shown if it fails."""
    child = subprocess.Popen(
        [sys.executable, "-c", TARGET, HOSTILE, TRACE_URL],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    url = child.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        child.kill()
        pytest.fail(f"target printed {url!r}; stderr:\n{child.communicate()[1]}")
    try:
        yield child, url
    finally:
        if child.poll() is None:
            child.kill()
        _, err = child.communicate(timeout=30)
        if child.returncode not in (0, -9):
            print(f"target stderr:\n{err}")


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    """Debian's headless chromium through its chromedriver, with a fresh profile."""
    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager download a driver
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    assert chromium, "chromium is not installed: run scripts/install-stack-tools.sh"
    assert driver_path, "chromedriver is not installed: run scripts/install-stack-tools.sh"
    profile = tempfile.mkdtemp(prefix="thunkscope-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,600",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_until(driver: WebDriver, condition: str, what: str) -> None:
    """Wait (generously) for a JavaScript `condition` to hold in the page."""
    try:
        WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(
            lambda d: d.execute_script(f"return Boolean({condition});")
        )
    except TimeoutException:
        body = driver.find_element(By.TAG_NAME, "body").text
        pytest.fail(f"page never showed {what}; it shows:\n{body}")


class TestDebugPageInChromium:
    def test_stalled_row_appears_then_goes(
        self, target: tuple[subprocess.Popen[str], str], browser: WebDriver
    ) -> None:
        """From the DOM: the stalled row with its text, link and stack; gone once it ends."""
        child, url = target
        browser.get(url)
        wait_until(
            browser, "document.querySelector('#rows tr[data-state=\"stalled\"]')", "a stalled row"
        )
        rows = browser.find_elements(By.CSS_SELECTOR, "#rows tr")
        assert len(rows) == 1
        row = rows[0]
        assert row.find_element(By.CSS_SELECTOR, "td.name").get_attribute("textContent") == HOSTILE
        assert browser.execute_script("return window.pwned === undefined")
        assert (
            browser.execute_script(
                "return document.querySelectorAll('#rows script, #rows img').length"
            )
            == 0
        )
        link = row.find_element(By.TAG_NAME, "a")
        trace_id = link.text
        assert len(trace_id) == 32
        assert link.get_attribute("href") == TRACE_URL.replace("{trace_id}", trace_id)
        row.find_element(By.TAG_NAME, "summary").click()
        stack = row.find_element(By.TAG_NAME, "pre").text
        assert "in stuck_backend" in stack

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "debug-page.png"
        assert browser.save_screenshot(str(shot))
        print(f"screenshot of the debug page: {shot}")

        assert child.stdin is not None
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout is not None
        assert child.stdout.readline() == "ended\n"
        wait_until(
            browser,
            "document.querySelectorAll('#rows tr').length === 0 && "
            "!document.getElementById('empty').hidden",
            "the empty table",
        )
        assert browser.current_url == url  # refreshed in place, never reloaded
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=30) == 0


class TestPageSource:
    def test_no_external_assets(self, target: tuple[subprocess.Popen[str], str]) -> None:
        """The page names no other origin: no src/href to http(s), only its own ./inflight."""
        _, url = target
        with urllib.request.urlopen(url, timeout=30) as reply:
            page = reply.read().decode()
            csp = reply.headers["Content-Security-Policy"]
        assert "src=" not in page.replace("src=x", "")
        assert "http://" not in page.replace("http://jaeger.example:16686/trace/{trace_id}", "")
        assert "https://" not in page
        assert 'fetch("inflight"' in page
        assert "default-src 'none'" in csp
        assert "connect-src 'self'" in csp
