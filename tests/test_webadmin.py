"""Web admin console over HTTP against a real server: login, CSRF, escaping, form validation,
actions checked in the store, /metrics as strict Prometheus text moving with a comet stream.

The browser-driven walk through the pages is in ``test_webadmin_browser.py``.
"""

from __future__ import annotations

import re
import socket
import time
from html.parser import HTMLParser
from typing import Iterator, Optional

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from presenced.webadmin.auth import ScryptHash
from tests.helpers import (FUZZ_SCALE, SERVER_ERRORS, PresencedProcess, fuzz_rng, mutate,
                           on_store, open_stream, roster, webadmin_login as login,
                           webadmin_url as base)
from tests.ircd import cat
from tests.helpers import thrift_client

EVIL = '<script>alert("x")</script>'
METRICS_TOKEN = "scrape-me"
CONSOLE_ONLY = ("<script>", "console-pw")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[PresencedProcess]:
    """One server for the module: comet without tokens (a test opens a stream), and two
    admins: a store account and a console-only account literally named ``<script>``. No
    Thrift port, so presencedctl writes the store directly."""
    directory = tmp_path_factory.mktemp("webadmin")
    entry = f"{CONSOLE_ONLY[0]}:{ScryptHash.make(CONSOLE_ONLY[1])}"
    process = PresencedProcess(directory, {
        "xmpp": {"enabled": False}, "thrift": {"enabled": False},
        "comet": {"require_token": False, "replay_linger": 0.0},
        "webadmin": {"admins": ["admin@localhost", entry], "stats_interval": 0.5,
                     "metrics_token": METRICS_TOKEN},
    })
    process.start()
    for user, password in (("admin", "admin-pw"), ("alice", "alice-pw"), ("bob", "bob-pw")):
        process.ctl("adduser", user, "--password", password)
    process.ctl("add-friend", "alice", "bob")
    seed_hostile_data(process)
    yield process
    process.stop()


def seed_hostile_data(server: PresencedProcess) -> None:
    """Roster names, groups, an offline message and a tune full of markup, written straight
    into the server's embedded store (no door lets a client set all of these yet)."""
    on_store(server, f"""
EVIL = {EVIL!r}
yield store.set_roster_item("alice@localhost", RosterItem(
    "mallory@localhost", "to", name=EVIL, groups=(EVIL,), ask=True))
yield store.open_list("offline").push("alice@localhost", "<message from='mallory@localhost'><body>"
                         + EVIL.replace("<", "&lt;") + "</body></message>", 100)
yield store.open_map("pep").set("alice@localhost", TUNE_NS,
                         PepItem(TUNE_ITEM_ID, Tune(artist=EVIL, title="Song").to_xml()).encode())
""")


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


class TextAndScripts(HTMLParser):
    """What a browser would see as text, and which <script> elements it would run."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.scripts: list[dict] = []

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.scripts.append(dict(attrs))

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> TextAndScripts:
    parser = TextAndScripts()
    parser.feed(html)
    return parser


# --- authentication -----------------------------------------------------------------------


def test_every_page_needs_a_login(server):
    url = base(server)
    for path in ("/", "/users?q=a", "/user?jid=alice", "/graph?jid=alice",
                 "/confirm?action=kick&user=alice&session=1"):
        reply = requests.get(url + path, allow_redirects=False, timeout=10)
        assert reply.status_code == 303, path
        assert reply.headers["location"].startswith("/login?next=%2F"), path
    assert requests.get(url + "/live/stats", timeout=10).status_code == 401
    reply = requests.post(url + "/action", data={"action": "add-friend", "user": "alice",
                                                 "friend": "carol"}, timeout=10)
    assert reply.status_code == 403
    assert "carol@localhost" not in roster(server, "alice")


def test_wrong_password_is_refused_and_counted(server):
    def failures() -> float:
        return metric(server, "presenced_auth_failures_total", door="webadmin") or 0

    before = failures()
    for name, password in (("admin@localhost", "wrong"), ("alice@localhost", "alice-pw"),
                           ("nobody", "x"), ("<script>", "admin-pw")):
        reply = requests.post(base(server) + "/login", data={"name": name, "password": password},
                              allow_redirects=False, timeout=10)
        assert reply.status_code == 401, name  # alice is a user, but not an admin
        assert "Wrong account name or password." in reply.text
        assert "presenced_admin" not in reply.cookies
    assert failures() == before + 4
    reply = requests.post(base(server) + "/login", data={"name": "", "password": ""},
                          allow_redirects=False, timeout=10)
    assert reply.status_code == 401
    assert "Enter the admin account name." in reply.text and "Enter the password." in reply.text


def test_login_then_back_to_the_page_asked_for_and_logout(server):
    http = requests.Session()
    reply = http.post(base(server) + "/login",
                      data={"name": "ADMIN", "password": "admin-pw", "next": "/users?q=bo"},
                      allow_redirects=False, timeout=10)
    assert reply.status_code == 303 and reply.headers["location"] == "/users?q=bo"
    cookie = reply.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    page = http.get(base(server) + "/users?q=bo", timeout=10)
    assert page.status_code == 200 and "bob@localhost" in page.text
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    # Only local targets: never off to another site after logging in.
    reply = http.post(base(server) + "/login", data={"name": "admin", "password": "admin-pw",
                                                     "next": "//evil.example/"},
                      allow_redirects=False, timeout=10)
    assert reply.headers["location"] == "/"
    token = csrf_of(http.get(base(server) + "/", timeout=10).text)
    http.post(base(server) + "/logout", data={"csrf": token}, allow_redirects=False, timeout=10)
    assert http.get(base(server) + "/", allow_redirects=False, timeout=10).status_code == 303


# --- CSRF ------------------------------------------------------------------------------------


def test_actions_without_the_login_csrf_token_are_refused(server):
    http, other = login(server), login(server)
    other_token = csrf_of(other.get(base(server) + "/", timeout=10).text)
    form = {"action": "add-friend", "user": "alice@localhost", "friend": "eve@localhost"}
    for token in (None, "", "forged", other_token):
        data = dict(form) if token is None else dict(form, csrf=token)
        reply = http.post(base(server) + "/action", data=data, allow_redirects=False, timeout=10)
        assert reply.status_code == 403, token
        assert "Form expired" in reply.text
    # Logging out is an action too: a forged logout leaves the login alone.
    http.post(base(server) + "/logout", data={"csrf": "forged"}, timeout=10)
    assert http.get(base(server) + "/", allow_redirects=False, timeout=10).status_code == 200
    assert "eve@localhost" not in roster(server, "alice")


# --- escaping --------------------------------------------------------------------------------


def test_markup_in_names_messages_and_tunes_renders_as_text(server):
    http = login(server)
    page = http.get(base(server) + "/user", params={"jid": "alice"}, timeout=10)
    assert page.status_code == 200
    seen = parse(page.text)
    text = "".join(seen.text)
    assert EVIL in text                      # roster name and group, tune artist: shown as text
    assert "&lt;script&gt;" in page.text
    assert "<script>alert" not in page.text
    assert all(s.get("src") == "/static/live.js" for s in seen.scripts)
    assert "<message from='mallory@localhost'>" in text  # the offline stanza, as text
    search = http.get(base(server) + "/users", params={"q": EVIL}, timeout=10)
    assert "<script>alert" not in search.text and EVIL in "".join(parse(search.text).text)
    confirm = http.get(base(server) + "/confirm",
                       params={"action": "add-friend", "user": "alice", "friend": EVIL},
                       timeout=10)
    assert confirm.status_code == 400 and "<script>alert" not in confirm.text


def test_an_admin_named_script_is_shown_as_text(server):
    http = login(server, *CONSOLE_ONLY)
    page = http.get(base(server) + "/", timeout=10)
    assert '<span class="admin">&lt;script&gt;</span>' in page.text
    assert [s.get("src") for s in parse(page.text).scripts] == ["/static/live.js"]


# --- forms -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path, params, message", [
    ("/users", {"q": "   "}, "Enter part of a user name."),
    ("/users", {"q": "x" * 300}, "Search for at most 256 characters."),
    ("/user", {"jid": "a b@c"}, "Not a valid user name"),
    ("/graph", {}, "Enter a user"),
    ("/confirm", {"action": "launch-missiles", "user": "alice"}, "Unknown action."),
    ("/confirm", {"action": "add-friend", "user": "alice", "friend": ""}, "Enter a friend"),
    ("/confirm", {"action": "add-friend", "user": "alice", "friend": "alice@localhost"},
     "A user cannot be their own friend."),
    ("/confirm", {"action": "kick", "user": "alice", "session": "12345"},
     "That session is no longer connected."),
    ("/confirm", {"action": "reset-password", "user": "carol"},
     "There is no account named carol@localhost."),
])
def test_bad_input_shows_what_is_wrong(server, path, params, message):
    reply = login(server).get(base(server) + path, params=params, timeout=10)
    assert reply.status_code == 400
    errors = re.search(r'<ul class="errors" role="alert">(.*?)</ul>', reply.text)
    assert errors and message in errors.group(1)


def test_reset_password_validates_then_changes_it(server):
    server.ctl("adduser", "dora", "--password", "old-password")
    http = login(server)
    page = http.get(base(server) + "/confirm", params={"action": "reset-password",
                                                       "user": "dora"}, timeout=10)
    assert page.status_code == 200 and 'type="password"' in page.text
    form = {"action": "reset-password", "user": "dora@localhost", "csrf": csrf_of(page.text)}
    for password, repeat, message in (("short", "short", "at least 6 characters"),
                                      ("long-enough", "different", "The two passwords differ.")):
        reply = http.post(base(server) + "/action",
                          data=dict(form, password=password, repeat=repeat), timeout=10)
        assert reply.status_code == 400 and message in reply.text
        assert 'value="' + password not in reply.text  # passwords are never echoed
    reply = http.post(base(server) + "/action",
                      data=dict(form, password="new-password", repeat="new-password"),
                      allow_redirects=False, timeout=10)
    assert reply.status_code == 303
    assert reply.headers["location"] == "/user?jid=dora%40localhost&done=password-reset"
    # The store now holds the new password: an admin account checks it the same way.
    checked = on_store(server, """
credentials = yield store.get_credentials("dora@localhost")
print(verify_password(credentials, "new-password"), verify_password(credentials, "old-password"))
""")
    assert checked.split() == ["True", "False"]


def test_remove_friend_after_confirmation(server):
    server.ctl("add-friend", "bob", "frank")
    http = login(server)
    user_page = http.get(base(server) + "/user", params={"jid": "bob"}, timeout=10).text
    link = re.search(r'href="(/confirm\?action=remove-friend[^"]*frank[^"]*)"', user_page)
    assert link
    confirm = http.get(base(server) + link.group(1).replace("&amp;", "&"), timeout=10)
    assert "End the friendship of" in confirm.text
    assert "frank@localhost" in roster(server, "bob")  # nothing happens before confirming
    reply = http.post(base(server) + "/action", data={
        "action": "remove-friend", "user": "bob@localhost", "friend": "frank@localhost",
        "csrf": csrf_of(confirm.text)}, timeout=10)
    assert reply.status_code == 200 and "Friend removed." in reply.text
    assert "frank@localhost" not in roster(server, "bob")
    assert "bob@localhost" not in roster(server, "frank")


# --- metrics, live figures, sessions --------------------------------------------------------

SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
                    r'(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*\})? '
                    r'(-?[0-9.e+-]+|NaN|[+-]Inf)$')


def scrape(server: PresencedProcess) -> dict[tuple[str, tuple], float]:
    """``/metrics`` checked strictly (every line HELP, TYPE or a well-formed sample, each
    family declared before its samples, no series twice), then parsed by prometheus_client."""
    reply = requests.get(base(server) + "/metrics", timeout=10,
                         headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    declared: set[str] = set()
    seen: set[str] = set()
    for line in reply.text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            parts = line.split(" ", 3)
            assert len(parts) >= 4, line
            if parts[1] == "TYPE":
                assert parts[3] in ("counter", "gauge", "histogram", "summary", "untyped"), line
                declared.add(parts[2])
            continue
        assert SAMPLE.match(line), f"not a Prometheus sample line: {line!r}"
        name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
        assert name in declared, f"{name} has no TYPE line before its samples"
        series = line.rsplit(" ", 1)[0]
        assert series not in seen, f"{series} appears twice"
        seen.add(series)
    values = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def metric(server: PresencedProcess, name: str, **labels: str) -> Optional[float]:
    return scrape(server).get((name, tuple(sorted(labels.items()))))


def test_metrics_need_the_configured_token(server):
    url = base(server) + "/metrics"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer nope"},
                        timeout=10).status_code == 401


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_metrics_and_pages_follow_a_session_until_it_is_kicked(server):
    before = scrape(server)
    for name in ("presenced_router_deliveries_total", "presenced_router_delivery_errors_total",
                 "presenced_store_latency_seconds", "presenced_uptime_seconds",
                 "presenced_router_events_sent_total"):
        assert (name, ()) in before, name
    sessions = ("presenced_router_sessions", (("door", "comet"),))
    connections = ("presenced_connections", (("door", "comet"),))
    assert before[sessions] == 0
    assert before[("presenced_accounts", ())] >= 3
    http = login(server)
    stream = open_stream(server, "bob@localhost")
    try:
        after = wait_for(lambda: (lambda m: m if m[sessions] == 1 else None)(scrape(server)))
        assert after[connections] == before[connections] + 1
        assert after[("presenced_router_online_users", ())] == \
            before[("presenced_router_online_users", ())] + 1
        stats = http.get(base(server) + "/live/stats", timeout=10).json()
        assert stats["sessions_by_door"]["comet"] == 1 and stats["online_users"] >= 1
        overview = http.get(base(server) + "/", timeout=10).text
        assert '<span data-live="sessions_by_door.comet">1</span>' in overview
        # bob's page lists the stream with a kick link; kicking needs the confirmation.
        page = http.get(base(server) + "/user", params={"jid": "bob"}, timeout=10).text
        kick = re.search(r'href="(/confirm\?action=kick[^"]*)"', page)
        assert kick and "<td>comet</td>" in page
        confirm = http.get(base(server) + kick.group(1).replace("&amp;", "&"), timeout=10)
        assert "Disconnect the" in confirm.text and confirm.status_code == 200
        form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"',
                               confirm.text.split('action="/action"')[1]))
        reply = http.post(base(server) + "/action", data=form, timeout=10)
        assert reply.status_code == 200 and "Session kicked." in reply.text
        stream.settimeout(10)
        while stream.recv(4096):
            pass  # the server closes the stream
        wait_for(lambda: scrape(server)[sessions] == 0)
    finally:
        stream.close()


def test_irc_http_cat_is_mounted_when_the_bot_offers_it(presenced_factory):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens: the bot keeps retrying, its HTTP endpoint still answers
    server = presenced_factory({
        "xmpp": {"enabled": False}, "comet": {"enabled": False},
        "thrift": {"enabled": False},
        "irc": {"enabled": True, "port": port, "http_token": "cat-token"},
        "webadmin": {"admins": ["admin@localhost"]},
    })
    server.ctl("adduser", "admin", "--password", "admin-pw")
    url = f"http://127.0.0.1:{server.ports['webadmin']}/irccat"
    reply = requests.post(url, data=b"hello", timeout=10)
    assert reply.status_code == 401  # the IRC door's own answer, not the console's login
    assert "bearer" in reply.text.lower()
    overview = login(server).get(f"http://127.0.0.1:{server.ports['webadmin']}/", timeout=10)
    assert "<h2>IRC bot</h2>" in overview.text
    assert f"127.0.0.1:{port}" in overview.text and "not connected" in overview.text


def test_thrift_calls_cat_lines_and_comet_streams_have_series_of_their_own(presenced_factory):
    """Each door's traffic under a name that says what it counts, not under the names of
    stanzas or logins (docs/admin-console.md, "Renamed series")."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # no IRC server: cat lines wait in the bot's queue, and are still counted
    server = presenced_factory({
        "xmpp": {"enabled": False},
        "comet": {"require_token": False, "replay_linger": 0.0},
        "irc": {"enabled": True, "port": port, "http_token": "cat-token"},
    })
    before = scrape(server)
    calls = ("presenced_thrift_calls_total", ())
    cat_lines = ("presenced_irc_cat_lines_total", ())
    streams = ("presenced_comet_streams_opened_total", ())
    thrift = thrift_client(server)
    try:
        for _ in range(3):
            thrift.online_count()
        assert thrift.stats()["thrift_calls"] == before.get(calls, 0) + 4  # stats() counts too
    finally:
        thrift.close()
    cat(server.ports["irc_cat"], b"#presenced one\n#presenced two\n")
    reply = requests.post(base(server) + "/irccat", data=b"#presenced three\nfour",
                          headers={"Authorization": "Bearer cat-token"}, timeout=10)
    assert reply.status_code == 200, reply.text
    open_stream(server, "alice@localhost").close()
    # The cat port's lines are read whenever the server gets to that connection (nothing
    # answers them): wait for their count as for the stream's.
    after = wait_for(lambda: (lambda m: m if m.get(streams) == 1 and m.get(cat_lines) == 4
                              else None)(scrape(server)))
    assert after[calls] == before.get(calls, 0) + 4
    for door in ("thrift", "irc"):
        assert ("presenced_stanzas_in_total", (("door", door),)) not in after
    assert ("presenced_logins_total", (("door", "comet"),)) not in after


# --- configuration and logins ----------------------------------------------------------------


def test_a_bad_admins_entry_stops_the_server_with_the_key_named(presenced_factory):
    server = presenced_factory({"xmpp": {"enabled": False}, "comet": {"enabled": False},
                                "thrift": {"enabled": False},
                                "webadmin": {"admins": ["ops:md5$abc"]}}, start=False)
    with pytest.raises(RuntimeError) as failed:
        server.start()
    assert "[webadmin] admins: bad entry 'ops:md5$abc'" in str(failed.value)


def test_logins_expire_when_idle_and_stay_bounded():
    from twisted.internet.task import Clock
    from twisted.web.server import Request
    from twisted.web.test.requesthelper import DummyChannel

    from presenced.webadmin import sessions

    clock = Clock()
    logins = sessions.AdminLogins(ttl=60, clock=clock.seconds)

    def browser_with(cookie_header: bytes) -> Request:
        request = Request(DummyChannel())
        request.received_cookies = {sessions.COOKIE: cookie_header} if cookie_header else {}
        return request

    first = browser_with(b"")
    logins.start(first, "admin@localhost")
    cookie = first.cookies[0].split(b";")[0].split(b"=", 1)[1]
    clock.advance(59)
    assert logins.get(browser_with(cookie)).admin == "admin@localhost"  # and stays alive
    clock.advance(59)
    assert logins.get(browser_with(cookie)) is not None
    clock.advance(61)
    assert logins.get(browser_with(cookie)) is None
    assert logins.get(browser_with(b"\xff\xfe")) is None
    for _ in range(sessions.MAX_LOGINS + 10):
        logins.start(browser_with(b""), "admin@localhost")
    assert len(logins) == sessions.MAX_LOGINS


@pytest.mark.fuzz
def test_fuzzed_requests_are_answered_never_an_error_of_the_server(presenced_factory):
    # A server of its own: the fuzzed logins get its address banned.
    server = presenced_factory({"xmpp": {"enabled": False}, "comet": {"enabled": False},
                                "thrift": {"enabled": False},
                                "irc": {"http_token": "t0ken"}})
    rng = fuzz_rng(2468)
    port = server.ports["webadmin"]
    seeds = [b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
             b"\r\nContent-Length: 29\r\n\r\nname=a&password=b&next=%2Fu",
             b"GET /users?q=al%C3%A9 HTTP/1.1\r\nHost: x\r\nCookie: presenced_admin=abc\r\n\r\n",
             b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x\r\n\r\n",
             b"GET /confirm?action=kick&user=a%40localhost HTTP/1.1\r\nHost: x\r\n\r\n",
             b"POST /irccat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n"
             b"5\r\nhello\r\n0\r\n\r\n"]
    for _ in range(40 * FUZZ_SCALE):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            try:
                sock.sendall(mutate(rng, rng.choice(seeds), edits=4))
                sock.settimeout(0.1)
                sock.recv(65536)
            except OSError:
                pass
    assert server.process.poll() is None
    assert not SERVER_ERRORS.search(server.log()), server.log()[-4000:]
