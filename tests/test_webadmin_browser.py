"""The web admin console in a real headless Chromium: log in, watch live figures, search a
user, open their page, add a friend through the confirmation, check the store, see the graph.

Screenshots of every page go to a temporary directory, or to ``$PRESENCED_SCREENSHOTS``
(``PRESENCED_SCREENSHOTS=docs/img`` refreshes the ones docs/admin-console.md shows).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.wait import WebDriverWait

from tests.helpers import REPO, on_store, open_stream, roster

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path: Path):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("chromium and chromedriver are needed: run scripts/install-test-deps.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,900",
                 "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    target = os.environ.get("PRESENCED_SCREENSHOTS")
    directory = (REPO / target) if target and not os.path.isabs(target) else \
        Path(target) if target else tmp_path / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def snap(driver, directory: Path, name: str) -> None:
    """A screenshot of the whole page, beyond the window (Chrome DevTools protocol)."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 3000),
                 "scale": 1}})
    (directory / f"webadmin-{name}.png").write_bytes(base64.b64decode(shot["data"]))


def test_operator_adds_a_friend_through_the_console(presenced_factory, browser, screenshots):
    server = presenced_factory({
        "xmpp": {"enabled": False}, "thrift": {"enabled": False},
        "comet": {"require_token": False},
        "webadmin": {"admins": ["root@localhost"], "stats_interval": 0.5},
    })
    for user in ("root", "alice", "bob", "carol", "dave", "erin", "alina"):
        server.ctl("adduser", user, "--password", f"{user}-password")
    for friend in ("bob", "dave"):
        server.ctl("add-friend", "alice", friend)
    on_store(server, """
yield store.add_subscriptions([("erin@localhost", "alice@localhost"),
                               ("alice@localhost", "carol@localhost")])
yield store.open_map("pep").set("alice@localhost", TUNE_NS, PepItem(TUNE_ITEM_ID, Tune(
    artist="Nina Simone", title="Feeling Good", source="I Put a Spell on You",
    length=177, track="7").to_xml()).encode())
yield store.open_list("offline").push("alice@localhost", "<message from='bob@localhost' type='chat'>"
                         "<body>see you at eight</body></message>", 100)
""")
    url = f"http://127.0.0.1:{server.ports['webadmin']}"
    wait = WebDriverWait(browser, 20)

    browser.get(url + "/")  # not logged in: the login form, which returns here afterwards
    wait.until(ec.presence_of_element_located((By.NAME, "password")))
    browser.find_element(By.NAME, "name").send_keys("root@localhost")
    browser.find_element(By.NAME, "password").send_keys("wrong")
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "ul.errors"),
                                                "Wrong account name or password."))
    browser.find_element(By.NAME, "password").send_keys("root-password")
    snap(browser, screenshots, "login")
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()

    # Overview: the figures follow the server without a reload (the page script polls).
    wait.until(ec.title_contains("Overview"))
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-live-updated"))
    assert browser.find_element(By.CSS_SELECTOR, "[data-live=sessions]").text == "0"
    stream = open_stream(server, "alice@localhost")
    try:
        wait.until(ec.text_to_be_present_in_element(
            (By.CSS_SELECTOR, "[data-live='sessions_by_door.comet']"), "1"))
        assert browser.find_element(By.CSS_SELECTOR, "[data-live=sessions]").text == "1"
        snap(browser, screenshots, "overview")

        # Search, then open alice's page.
        browser.find_element(By.LINK_TEXT, "Users").click()
        search = wait.until(ec.presence_of_element_located((By.NAME, "q")))
        search.send_keys("ali")
        browser.find_element(By.CSS_SELECTOR, "form.search button").click()
        wait.until(ec.presence_of_element_located((By.LINK_TEXT, "alina@localhost")))
        snap(browser, screenshots, "search")
        browser.find_element(By.PARTIAL_LINK_TEXT, "alice@localhost").click()
        wait.until(ec.title_contains("alice@localhost"))
        page = browser.find_element(By.TAG_NAME, "main").text
        assert "Nina Simone - Feeling Good (I Put a Spell on You)" in page
        assert "see you at eight" in page
        roster_cells = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "table td")]
        assert "bob@localhost" in roster_cells and "dave@localhost" in roster_cells
        assert "comet" in roster_cells  # alice's stream, with a kick link
        snap(browser, screenshots, "user")

        # Add carol as a friend: nothing changes until the confirmation.
        browser.find_element(By.NAME, "friend").send_keys("carol")
        browser.find_element(By.CSS_SELECTOR, "form.inline button").click()
        wait.until(ec.title_contains("Please confirm"))
        assert "carol@localhost" not in roster(server, "alice")
        snap(browser, screenshots, "confirm")
        browser.find_element(By.CSS_SELECTOR, "button.confirm").click()
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "p.notice"),
                                                    "Friend added."))
        assert roster(server, "alice")["carol@localhost"] == "both"
        assert roster(server, "carol")["alice@localhost"] == "both"
        cells = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "table td")]
        assert "carol@localhost" in cells

        # The subscription graph around alice: friends both ways, erin follows, carol now mutual.
        browser.find_element(By.LINK_TEXT, "Subscription graph").click()
        wait.until(ec.title_contains("Subscription graph"))
        labels = {t.text for t in browser.find_elements(By.CSS_SELECTOR, "svg.graph text")}
        assert {"bob@localhost", "carol@localhost", "dave@localhost", "erin@localhost",
                "alice@localhost"} <= labels
        assert browser.find_elements(By.CSS_SELECTOR, "svg.graph circle.node.follower")
        snap(browser, screenshots, "graph")
    finally:
        stream.close()
    assert sorted(p.name for p in screenshots.glob("webadmin-*.png")) == [
        f"webadmin-{n}.png" for n in ("confirm", "graph", "login", "overview", "search", "user")]
