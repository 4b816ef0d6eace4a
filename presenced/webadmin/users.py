"""User search and the page of one user: roster, subscribers, sessions, tune, offline messages.

Every action on the page is a link or a GET form to ``/confirm`` (see :mod:`.actions`), so
nothing changes until the operator confirms on a page that carries the CSRF token.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer
from twisted.web.template import Tag, tags

from presenced.core import Core
from presenced.router import ISession
from presenced.store import OFFLINE_STORE, PENDING_STORE
from presenced.users import BadUser
from presenced.webadmin.console import Console, arg
from presenced.webadmin.layout import (Page, definitions, errors, hidden, href, table,
                                       user_link)

SEARCH_LIMIT = 100
LIST_LIMIT = 500
OFFLINE_SHOWN = 50
STANZA_CHARS = 2000
MAX_QUERY = 256

# Outcomes an action reports back to the user page (?done=...): fixed texts, never echoed input.
DONE = {
    "friend-added": "Friend added.",
    "friend-removed": "Friend removed.",
    "kicked": "Session kicked.",
    "password-reset": "Password changed.",
}


def session_key(session: ISession) -> str:
    """Names a session for a kick link while it is connected."""
    return f"{id(session):x}"


def parse_user(core: Core, text: Optional[str], what: str = "user") -> tuple[Optional[str], list[str]]:
    """``(user, [])`` for a valid name, ``(None, [problem])`` otherwise."""
    if text is None or not text.strip():
        return None, [f"Enter a {what} (user@domain, or a name on {core.config.default_domain})."]
    if len(text) > MAX_QUERY:
        return None, [f"That {what} name is too long."]
    try:
        return core.user(text), []
    except BadUser as e:
        return None, [f"Not a valid {what} name: {e}"]


def search_form(query: str) -> Tag:
    return tags.form(
        tags.label("Name contains", tags.input(name="q", value=query, type="search",
                                               maxlength=str(MAX_QUERY))),
        tags.button("Search", type="submit"), method="get", action="/users", class_="search")


def user_list(core: Core, users: list[str]) -> Tag:
    shown = sorted(users)[:LIST_LIMIT]
    more = len(users) - len(shown)
    items = [tags.li(user_link(u, core.router.is_online(u))) for u in shown]
    if more > 0:
        items.append(tags.li(f"… and {more} more", class_="more"))
    return tags.ul(*items, class_="users") if items else tags.p("None.", class_="empty")


def register(console: Console) -> None:
    @console.route("GET", "/users")
    @defer.inlineCallbacks
    def search(console: Console, request, login):
        query = arg(request, "q")
        if query is None:
            return Page("Users", search_form(""))
        text = query.strip()
        if not text:
            return Page("Users", [errors(["Enter part of a user name."]), search_form(query)],
                        400)
        if len(text) > MAX_QUERY:
            return Page("Users", [errors([f"Search for at most {MAX_QUERY} characters."]),
                                  search_form("")], 400)
        found = yield console.core.store.search_users(text.lower() if text.isascii() else text,
                                                      SEARCH_LIMIT)
        summary = (f"First {SEARCH_LIMIT} users" if len(found) >= SEARCH_LIMIT
                   else f"{len(found)} user(s)") + " whose name contains "
        return Page("Users", [search_form(query),
                              tags.p(summary, tags.q(text), ":", class_="summary"),
                              user_list(console.core, found)])

    @console.route("GET", "/user")
    @defer.inlineCallbacks
    def user_page(console: Console, request, login):
        user, problems = parse_user(console.core, arg(request, "jid"))
        if user is None:
            return Page("User", [errors(problems), search_form("")], 400)
        body = yield user_details(console.core, user, arg(request, "done"))
        return Page(user, body)


@defer.inlineCallbacks
def user_details(core: Core, user: str, done: Optional[str]):
    store = core.store
    exists, roster, subscribers, subscriptions, offline, pending = yield defer.gatherResults([
        core.accounts.exists(user), store.get_roster(user), store.get_subscribers(user),
        store.get_subscriptions(user), store.open_list(OFFLINE_STORE).peek(user),
        store.open_map(PENDING_STORE).items(user),
    ], consumeErrors=True).addErrback(lambda f: f.value.subFailure)
    tune = yield _tune(core, user)
    sessions = core.router.sessions(user)
    notice = DONE.get(done or "")
    return [
        tags.p(notice, class_="notice", role="status") if notice else "",
        definitions([
            ("Account", "exists" if exists else "none (this name is only in the graph)"),
            ("Online", f"{len(sessions)} session(s)" if sessions else "no"),
            ("Now playing", tune),
            ("Subscription graph", tags.a(f"{len(subscribers)} follower(s), "
                                          f"{len(subscriptions)} following",
                                          href=href("/graph", jid=user))),
        ], class_="figures"),
        _actions(user, exists),
        tags.h2("Sessions"),
        table(("Front door", "Name", ""),
              ([s.protocol, s.label,
                tags.a("Kick…", href=href("/confirm", action="kick", user=user,
                                          session=session_key(s)))] for s in sessions),
              "No sessions online."),
        tags.h2(f"Roster ({len(roster)})"),
        table(("Contact", "Subscription", "Pending out", "Name", "Groups", ""),
              ([user_link(i.jid, core.router.is_online(i.jid)), i.subscription,
                "asked" if i.ask else "", i.name or "", ", ".join(i.groups),
                tags.a("Remove friend…", href=href("/confirm", action="remove-friend",
                                                   user=user, friend=i.jid))]
               for i in sorted(roster, key=lambda i: i.jid)[:LIST_LIMIT]),
              "The roster is empty."),
        tags.h2(f"Subscribers ({len(subscribers)})"),
        tags.p("Users who receive this user's events.", class_="hint"),
        user_list(core, subscribers),
        tags.h2(f"Subscriptions ({len(subscriptions)})"),
        tags.p("Users whose events this user receives.", class_="hint"),
        user_list(core, subscriptions),
        tags.h2(f"Pending subscription requests ({len(pending)})"),
        user_list(core, list(pending)),
        tags.h2(f"Offline messages ({len(offline)})"),
        _offline(offline),
    ]


def _actions(user: str, exists: bool) -> Tag:
    add = tags.form(*hidden(action="add-friend", user=user),
                    tags.label("Add friend", tags.input(name="friend", required="required",
                                                        maxlength=str(MAX_QUERY),
                                                        placeholder="user@domain")),
                    tags.button("Add friend…", type="submit"),
                    method="get", action="/confirm", class_="inline")
    links = [tags.a("Subscription graph", href=href("/graph", jid=user))]
    if exists:
        links.append(tags.a("Reset password…", href=href("/confirm", action="reset-password",
                                                         user=user)))
    return tags.div(add, tags.p(*[part for link in links for part in (link, " ")]),
                    class_="actions")


@defer.inlineCallbacks
def _tune(core: Core, user: str):
    try:
        tune = yield core.now_playing(user)
    except ValueError as e:
        return f"unreadable tune item ({e})"
    if tune is None:
        return "nothing"
    fields = [(name, getattr(tune, name)) for name in ("artist", "title", "source", "track",
                                                        "length", "rating", "uri")]
    return [tune.describe(), " ",
            tags.small("(" + ", ".join(f"{k}: {v}" for k, v in fields if v is not None) + ")")]


def _offline(stanzas: list[str]) -> Any:
    if not stanzas:
        return tags.p("None.", class_="empty")
    shown = [tags.li(tags.pre(s if len(s) <= STANZA_CHARS else s[:STANZA_CHARS] + "…"))
             for s in stanzas[:OFFLINE_SHOWN]]
    more = len(stanzas) - OFFLINE_SHOWN
    if more > 0:
        shown.append(tags.li(f"… and {more} more", class_="more"))
    return tags.ol(*shown, class_="offline")
