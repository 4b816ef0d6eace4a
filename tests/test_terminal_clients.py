"""Today's terminal Jabber clients against presenced (issue 13): Debian's profanity, mcabber
and poezio each log in over STARTTLS and none of the errors they used to show appears.

Each client runs in its own tmux server (a private socket, so nothing is shared with a tmux
the developer runs) with HOME in a temporary directory holding only the config written here,
so the user's own client settings never matter. The test reads the client's screen with
``tmux capture-pane`` and polls until what it waits for appears; every screen seen is kept,
so an error that scrolled by between two checks still fails the test. A client that is not
installed, or cannot start, fails the test: it is not skipped.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.helpers import Client, PresencedProcess, run

SCREEN_DEADLINE = 30.0  # seconds to wait for something on a client's screen
POLL_INTERVAL = 0.2
NOBODY = 65534  # poezio refuses to run as root; as root, it runs as nobody/nogroup
USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
FRIENDS = [("alice", "bob"), ("carol", "dave"), ("erin", "frank")]  # (client user, contact)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[PresencedProcess]:
    """One private presenced for the module, STARTTLS required (the default), each client
    test with its own account and contact so they do not see each other."""
    process = PresencedProcess(tmp_path_factory.mktemp("terminal"), {
        "comet": {"enabled": False}, "webadmin": {"enabled": False},
        "thrift": {"enabled": False}, "server": {"scram_iterations": 1000},
        "xmpp": {"require_tls": True}})
    process.start()
    process.ctl("import-users", "-", "--quiet",
                input="".join(f"{user}@localhost {user}-pw\n" for user in USERS))
    for user, contact in FRIENDS:
        process.ctl("add-friend", f"{user}@localhost", f"{contact}@localhost")
    yield process
    process.stop()


def server_certificate(server: PresencedProcess) -> Path:
    """The self-signed certificate the server generated; its names must include localhost
    (the accounts' domain), or no client checking it against its CA could accept it."""
    path = server.data_dir / "tls" / "xmpp.crt"
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == \
        ["localhost"]
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    return path


def require_programs(*names: str) -> None:
    """Fail, not skip, when a client is missing: CI installs them (install-test-deps.sh)."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: run scripts/install-test-deps.sh")


class TerminalClient:
    """A terminal program in a private tmux server, read through its screen.

    ``errors`` are texts it must never show; every poll checks the lines seen so far (and
    ``log``, a file where the client copies its messages), so a test fails at the first
    error instead of waiting for a screen that will not come.
    """

    def __init__(self, name: str, home: Path, errors: Sequence[str],
                 log: Optional[Path] = None):
        self.name = name
        self.home = home
        self.errors = tuple(errors)
        self.log = log
        # The server's socket lives in the temporary home: private to this client, and
        # removed with the home (tmux kill-server leaves its socket file behind).
        self.socket = home / "tmux.socket"
        self.seen: dict[str, None] = {}  # every screen line seen so far, in order

    def tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-S", str(self.socket), *args], capture_output=True,
                              text=True, check=check, timeout=10, env=self.environment())

    def environment(self) -> dict[str, str]:
        """Only what a terminal client needs, HOME and XDG dirs in the temporary home: no
        TMUX (a developer's tmux), no user config, a UTF-8 locale for the clients' borders."""
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
                "XDG_CONFIG_HOME": str(self.home / ".config"),
                "XDG_DATA_HOME": str(self.home / ".local" / "share"),
                "XDG_CACHE_HOME": str(self.home / ".cache"),
                "LANG": "C.UTF-8"}

    def start(self, command: Sequence[str]) -> None:
        """Run ``command`` in a 200x50 pane that stays after the program exits, so a client
        that quits at once leaves its last words on the screen for the failure message."""
        self.tmux("start-server", ";", "set-option", "-g", "remain-on-exit", "on", ";",
                  "new-session", "-d", "-x", "200", "-y", "50", "-c", str(self.home),
                  subprocess.list2cmdline(list(command)))

    def screen(self) -> str:
        text = self.tmux("capture-pane", "-p").stdout
        for line in text.splitlines():
            if line.strip():
                self.seen.setdefault(line.rstrip(), None)
        return text

    def exited(self) -> Optional[str]:
        """The program's exit status when it is no longer running."""
        dead, status = self.tmux("display-message", "-p",
                                 "#{pane_dead} #{pane_dead_status}").stdout.split(" ", 1)
        return status.strip() if dead == "1" else None

    def type(self, line: str) -> None:
        """Type ``line`` and Enter, literally (no tmux key names)."""
        self.tmux("send-keys", "-l", line)
        self.tmux("send-keys", "Enter")

    async def wait_for(self, pattern: str, timeout: float = SCREEN_DEADLINE) -> re.Match:
        """Poll the screen until ``pattern`` (a regular expression) shows."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            self.assert_no_errors()
            found = re.search(pattern, screen)
            if found:
                return found
            status = self.exited()
            if status is not None or time.monotonic() > deadline:
                why = f"exited with {status}" if status is not None else f"after {timeout}s"
                raise AssertionError(f"{self.name}: {pattern!r} not on the screen ({why}):\n"
                                     + screen)
            await asyncio.sleep(POLL_INTERVAL)

    def assert_no_errors(self) -> None:
        """None of ``errors`` was on any screen seen, nor in the client's log."""
        lines = list(self.seen)
        if self.log is not None and self.log.exists():
            lines += self.log.read_text(errors="replace").splitlines()
        shown = [line for line in lines if any(error in line for error in self.errors)]
        assert not shown, f"{self.name} showed errors:\n" + "\n".join(shown)

    def close(self) -> None:
        self.tmux("kill-server", check=False)


@pytest.fixture
def terminal() -> Iterator[Callable[..., TerminalClient]]:
    """Make a TerminalClient with a fresh temporary HOME; every tmux server started is
    killed and every home removed after the test, passed or failed."""
    clients: list[TerminalClient] = []

    def make(name: str, errors: Sequence[str], log: Optional[str] = None) -> TerminalClient:
        home = Path(tempfile.mkdtemp(prefix=f"presenced-{name}-home-"))
        client = TerminalClient(name, home, errors, home / log if log else None)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
        shutil.rmtree(client.home, ignore_errors=True)


def write_private(path: Path, text: str) -> Path:
    """A config holding a password: readable by its owner only (mcabber insists)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return path


# The errors, and profanity's other messages for a refused carbons, blocking or last
# activity request (its own strings, from the binary).
PROFANITY_ERRORS = ("Server error", "Error enabling carbons", "service-unavailable",
                    "not supported by server", "Last activity request failed",
                    "Block response received")


def test_profanity(server, terminal):
    """profanity: carbons enabled silently at login, /blocked lists and blocks, last
    activity answers for the server and a contact, and a chat message shows."""
    require_programs("tmux", "profanity")
    client = terminal("profanity", PROFANITY_ERRORS)
    port = server.ports["xmpp"]
    write_private(client.home / ".local" / "share" / "profanity" / "accounts", f"""\
[alice@localhost]
enabled=true
jid=alice@localhost
server=127.0.0.1
port={port}
resource=profanity
password=alice-pw
tls.policy=force
""")

    async def scenario() -> None:
        client.start(["profanity", "-a", "alice@localhost"])
        # The self-signed certificate is shown (its name is localhost) and accepted once.
        await client.wait_for(r"Common name\s+: localhost")
        await client.wait_for(r"Use '/tls allow'")
        client.type("/tls allow")
        await client.wait_for(r"alice@localhost/profanity logged in successfully")
        client.type("/blocked")  # answered after the carbons IQ sent at login
        await client.wait_for(r"No blocked users\.")
        client.type("/blocked add mallory@localhost")
        await client.wait_for(r"User mallory@localhost successfully blocked\.")
        client.type("/lastactivity get localhost")
        await client.wait_for(r"localhost up since .*, uptime ")

        bob = await Client("bob").start(port)
        await client.wait_for(r"bob@localhost \(test\) is online")
        client.type("/lastactivity get bob@localhost")
        await client.wait_for(r"bob@localhost currently logged in")  # 0 s: online
        bob.send_message(mto="alice@localhost", mbody="hello profanity, from bob",
                         mtype="chat")
        await client.wait_for(r"<< chat message: bob@localhost/test \(win 2\)")
        client.type("/win 2")
        await client.wait_for(r"bob@localhost/test: hello profanity, from bob")
        await bob.close()
        client.assert_no_errors()

    run(scenario())


def test_profanity_joins_a_room_sees_its_history_and_an_occupant(server, terminal):
    """profanity in a group chat room (XEP-0045): it joins, shows the history another
    occupant left and then that occupant's new message."""
    require_programs("tmux", "profanity")
    client = terminal("profanity-muc", PROFANITY_ERRORS)
    port = server.ports["xmpp"]
    room = "tea@conference.localhost"
    write_private(client.home / ".local" / "share" / "profanity" / "accounts", f"""\
[grace@localhost]
enabled=true
jid=grace@localhost
server=127.0.0.1
port={port}
resource=profanity
password=grace-pw
tls.policy=force
""")

    async def scenario() -> None:
        heidi = Client("heidi")
        heidi.register_plugin("xep_0045")
        await heidi.start(port)
        await heidi.plugin["xep_0045"].join_muc_wait(room, "Heidi", timeout=10)
        heidi.send_message(mto=room, mbody="scones are in the oven", mtype="groupchat")

        client.start(["profanity", "-a", "grace@localhost"])
        await client.wait_for(r"Use '/tls allow'")
        client.type("/tls allow")
        await client.wait_for(r"grace@localhost/profanity logged in successfully")
        client.type(f"/join {room} nick Grace")
        await client.wait_for(r"Heidi: scones are in the oven")  # the room's history
        heidi.send_message(mto=room, mbody="tea is ready", mtype="groupchat")
        await client.wait_for(r"Heidi: tea is ready")
        await heidi.close()
        client.assert_no_errors()

    run(scenario())


# The errors, and mcabber's own messages for a refused stanza, missing private
# storage or a certificate it does not trust.
MCABBER_ERRORS = ("Received error packet", "does not support bookmarks storage",
                  "roster notes storage", "doesn't seem to support private storage",
                  "Error message received", "Received unhandled IQ request",
                  "Certificate is not trusted", "Certificate hostname does not match",
                  "SSL error")


def test_mcabber(server, terminal):
    """mcabber 1.1: its legacy session IQ after bind, bookmarks and roster notes in private
    storage, carbons; the certificate checked against the server's own as CA."""
    require_programs("tmux", "mcabber")
    # log_win_height: room for every status line on the screen; the trace log (level 1: the
    # same messages) also catches any that scroll out of the window between two polls.
    client = terminal("mcabber", MCABBER_ERRORS, log=".mcabber/trace.log")
    write_private(client.home / ".mcabber" / "mcabberrc", f"""\
set jid = carol@localhost
set password = carol-pw
set server = 127.0.0.1
set port = {server.ports['xmpp']}
set resource = mcabber
set tls = 1
set ssl_ca = {server_certificate(server)}
set carbons = 1
set log_win_height = 20
set tracelog_level = 1
set tracelog_file = {client.log}
""").parent.chmod(stat.S_IRWXU)  # mcabber warns about a config directory others can read

    async def scenario() -> None:
        client.start(["mcabber"])
        await client.wait_for(r"Connection established\.")
        await client.wait_for(r"Carbons enabled\.")
        dave = await Client("dave").start(server.ports["xmpp"])
        await client.wait_for(r"\[o\] dave@localhost")
        # The contact's presence came after the answers to mcabber's login requests.
        client.assert_no_errors()
        await dave.close()

    run(scenario())


POEZIO_ERRORS = ("No remote bookmark storage available", "Unable to fetch the remote",
                 "Could not connect", "certificate", "Error>")


def poezio_command(home: Path) -> list[str]:
    """poezio quits at once as root ("Please do not run poezio as root"): as root, run it as
    nobody, with the temporary home handed over to that user."""
    if os.geteuid() != 0:
        return ["poezio"]
    require_programs("setpriv")
    for path in [home, *home.rglob("*")]:
        os.chown(path, NOBODY, NOBODY)
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "poezio"]


def test_poezio(server, terminal):
    """poezio 0.14 with the server's certificate as its CA: it verifies the TLS certificate
    itself, finds private storage for bookmarks in the server's disco, and shows the
    contact online."""
    require_programs("tmux", "poezio")
    client = terminal("poezio", POEZIO_ERRORS)
    # A copy in the client's home: the client may run as another user (above), who cannot
    # read the server's data directory.
    ca = client.home / "presenced-ca.crt"
    shutil.copyfile(server_certificate(server), ca)
    write_private(client.home / ".config" / "poezio" / "poezio.cfg", f"""\
[Poezio]
jid = erin@localhost/poezio
password = erin-pw
custom_host = 127.0.0.1
custom_port = {server.ports['xmpp']}
force_encryption = true
ca_cert_path = {ca}
""")

    async def scenario() -> None:
        client.start(poezio_command(client.home))
        await client.wait_for(r"Authentication success")
        await client.wait_for(r"Your JID is erin@localhost/poezio")
        frank = await Client("frank").start(server.ports["xmpp"])
        await client.wait_for(r"frank@localhost")
        # The bookmarks check runs on the server's disco#info answer, before the contact's
        # presence reaches poezio.
        client.assert_no_errors()
        await frank.close()

    run(scenario())
