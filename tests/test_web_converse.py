"""converse.js (npm, installed by scripts/install-test-deps.sh) in headless Chromium, over
WebSocket and over BOSH: it logs in, shows a friend made through Thrift ``add_friend``,
receives a chat from a slixmpp client and answers it through its own chat box. The page is
served from a local HTTP server of another origin, which ``[comet] cors_origins`` allows.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import json
import os
import threading
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.wait import WebDriverWait

from tests.helpers import REPO, Client, free_port, jid, thrift_admin

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CONVERSE = REPO / "build" / "web-clients" / "node_modules" / "converse.js" / "dist"
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>converse.js on presenced</title>
<link rel="stylesheet" href="dist/converse.min.css">
<script type="module" src="dist/converse.min.js"></script></head>
<body class="converse-fullscreen"><script type="module">
converse.plugins.add("presenced-test", {initialize() { window.testConverse = this._converse; }});
converse.initialize(Object.assign(%s, {whitelisted_plugins: ["presenced-test"]}));
</script></body></html>
"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def page_server(tmp_path: Path):
    """An HTTP server of the page and converse.js's files, on an origin of its own."""
    if not (CONVERSE / "converse.min.js").exists():
        pytest.fail("converse.js is not installed: run scripts/install-test-deps.sh")
    root = tmp_path / "site"
    root.mkdir()
    (root / "dist").symlink_to(CONVERSE)
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", free_port()), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def browser(tmp_path: Path):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("chromium and chromedriver are needed: run scripts/install-test-deps.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    for flag in ("--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def until(driver, script: str, timeout: float = 30):
    """Wait until ``script`` (a JavaScript expression) is truthy; returns its value."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(
            lambda d: d.execute_script(f"return {script}"))
    except Exception:
        text = driver.execute_script("return document.body.innerText")
        console = "\n".join(entry["message"] for entry in driver.get_log("browser"))
        raise AssertionError(f"not true in {timeout}s: {script}\npage: {text[:2000]}\n"
                             f"console: {console[-4000:]}") from None


@pytest.mark.parametrize("transport", ["websocket", "bosh"])
def test_converse_logs_in_shows_the_roster_and_chats(presenced_factory, page_server, browser,
                                                     transport):
    root, origin = page_server
    server = presenced_factory({"webadmin": {"enabled": False},
                                "comet": {"cors_origins": [origin]}})
    server.ctl("import-users", "-", "--quiet",
               input="alice@localhost alice-pw\nbob@localhost bob-pw\n")
    thrift_admin(server).add_friend(jid("alice"), jid("bob"))
    comet = server.ports["comet"]
    settings = {"jid": "alice@localhost", "password": "alice-pw", "auto_login": True,
                "discover_connection_methods": False, "view_mode": "fullscreen",
                "show_controlbox_by_default": True, "play_sounds": False,
                "show_desktop_notifications": False, "i18n": "en", "loglevel": "debug"}
    if transport == "websocket":
        settings["websocket_url"] = f"ws://127.0.0.1:{comet}/xmpp-websocket"
    else:
        settings["bosh_service_url"] = f"http://127.0.0.1:{comet}/http-bind"
    (root / "index.html").write_text(PAGE % json.dumps(settings))

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        def wait(script: str):
            return loop.run_in_executor(None, until, browser, script)

        await loop.run_in_executor(None, browser.get, f"{origin}/index.html")
        await wait("document.querySelector('converse-roster')?.innerText.includes('bob')")
        assert server.ctl("roster", "alice@localhost").stdout.count("bob@localhost") == 1

        bob = await Client("bob").start(server.ports["xmpp"])
        bob.send_message(mto="alice@localhost", mbody="hello from slixmpp", mtype="chat")
        # The roster counts it unread; opening the contact's chat shows it.
        await wait("document.querySelector('converse-roster a.open-chat.unread-msgs')")
        browser.execute_script(
            "document.querySelector('converse-roster a.open-chat.unread-msgs').click()")
        await wait("Array.from(document.querySelectorAll('.chat-msg__text'))"
                   ".some(e => e.textContent.includes('hello from slixmpp'))")

        def reply() -> None:
            box = WebDriverWait(browser, 20).until(
                lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR,
                                                           "textarea.chat-textarea")
                                if e.is_displayed()), None))
            box.send_keys("hello from converse", Keys.ENTER)

        await loop.run_in_executor(None, reply)
        message = await bob.message(timeout=20)
        assert message["body"] == "hello from converse"
        assert str(message["from"]).startswith("alice@localhost/")
        await bob.close()

    asyncio.run(asyncio.wait_for(scenario(), 120))
