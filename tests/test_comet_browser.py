"""The demo page in headless Chromium: paste a user and token, watch a friend's tune arrive.

Chromium is driven over the DevTools protocol (a WebSocket, with ``websocket-client``); the
tune is published through the Thrift admin door's ``publish_np``.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import websocket

from tests.helpers import COMET_ONLY, jid, thrift_admin, token

CHROMIUM = "/usr/bin/chromium"


class Browser:
    """One headless Chromium page, driven over the DevTools protocol."""

    def __init__(self, profile: Path):
        if not shutil.which(CHROMIUM):
            pytest.fail("chromium is not installed: run scripts/install-test-deps.sh")
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile}", "--remote-debugging-port=0",
             "--remote-allow-origins=*", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise AssertionError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t["type"] == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=30,
                                              suppress_origin=True)
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict:
        call_id = next(self._ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == call_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"not true in {timeout}s: {expression}; page: "
                             + str(self.evaluate("document.body.innerText")))

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def browser(tmp_path: Path):
    b = Browser(tmp_path / "chromium-profile")
    yield b
    b.close()


def test_demo_page_shows_a_friends_tune_live(presenced_factory, browser):
    server = presenced_factory(COMET_ONLY)
    admin = thrift_admin(server)
    admin.add_friend(jid("alice"), jid("bob"))
    page = f"http://127.0.0.1:{server.ports['comet']}/"
    browser.call("Page.enable")
    browser.call("Page.navigate", url=page)
    browser.wait_for("document.readyState === 'complete' && !!document.getElementById('watch')")
    bob = token(server, "bob")
    browser.evaluate(f"""
        document.getElementById('user').value = 'bob';
        document.getElementById('token').value = {json.dumps(bob)};
        document.getElementById('watch').click();
    """)
    browser.wait_for("document.getElementById('status').textContent.startsWith('live')")

    admin.publish_np(jid("alice"), "Stereolab", "Dots and Loops", "Brakhage", 300, 1)
    shown = browser.wait_for("document.getElementById('playing').innerText.includes('Brakhage')"
                             " && document.getElementById('playing').innerText")
    assert "alice@localhost" in shown and "Stereolab — Brakhage (Dots and Loops)" in shown

    admin.publish_np(jid("alice"), "Broadcast", "", "Tender Buttons", 0, 0)
    shown = browser.wait_for("document.getElementById('playing').innerText"
                             ".includes('Tender Buttons') && "
                             "document.getElementById('playing').innerText")
    assert "Brakhage" not in shown      # one row per friend, updated in place

    browser.evaluate("""
        document.getElementById('token').value = 'not-a-token';
        document.getElementById('watch').click();
    """)
    browser.wait_for("document.getElementById('status').textContent.startsWith('refused')")
