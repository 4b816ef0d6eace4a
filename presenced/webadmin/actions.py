"""Changes an operator makes: add or remove a friend, kick a session, reset a password.

Each goes through two steps. ``GET /confirm?action=...`` validates the request and shows
what will happen on a page whose form carries the login's CSRF token; ``POST /action``
validates again (the world may have changed), performs it through the core and sends the
browser back to the user page. Invalid input shows the problems and a way to correct them.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.template import Tag, tags

from presenced.webadmin.console import Console, arg
from presenced.webadmin.layout import Page, errors, hidden, href, post_form
from presenced.webadmin.users import MAX_QUERY, parse_user, session_key

log = Logger()
MIN_PASSWORD = 6
MAX_PASSWORD = 1024

Params = dict[str, Any]


class ConfirmedAction:
    """One kind of change: how to read and check it, ask about it, and do it."""

    name = ""
    button = ""
    done = ""
    editable: tuple[str, ...] = ()  # fields the operator may correct after an error

    def read(self, console: Console, request) -> defer.Deferred:
        """Fires ``(params, problems)`` from the query or form fields."""
        raise NotImplementedError

    def question(self, params: Params) -> Any:
        raise NotImplementedError

    def inputs(self) -> list[Tag]:
        """Fields typed on the confirmation page itself (never sent in a URL)."""
        return []

    def check_inputs(self, request, params: Params) -> list[str]:
        """Problems with :meth:`inputs` (adds their values to ``params``)."""
        return []

    def perform(self, console: Console, params: Params) -> defer.Deferred:
        raise NotImplementedError


def _user_and(console: Console, request, field: str, label: str) -> tuple[Params, list[str]]:
    user, problems = parse_user(console.core, arg(request, "user"))
    params: Params = {"user": user or ""}
    if field:
        other, more = parse_user(console.core, arg(request, field), label)
        params[field] = other or (arg(request, field) or "")[:MAX_QUERY]
        problems += more
        if user and other and user == other:
            problems.append("A user cannot be their own friend.")
    return params, problems


class AddFriend(ConfirmedAction):
    name, button, done, editable = "add-friend", "Make them friends", "friend-added", ("friend",)

    @defer.inlineCallbacks
    def read(self, console: Console, request):
        params, problems = _user_and(console, request, "friend", "friend")
        params["friend_exists"] = (not problems
                                   and (yield console.core.accounts.exists(params["friend"])))
        return params, problems

    def question(self, params: Params) -> Any:
        note = "" if params["friend_exists"] else tags.p(
            f"There is no account named {params['friend']}; the friendship is recorded "
            "anyway (web-only users live in the graph alone).", class_="warning")
        return [tags.p("Make ", tags.strong(params["user"]), " and ",
                       tags.strong(params["friend"]),
                       " mutual friends? Each gets the other on their roster with subscription "
                       "“both”, and their online sessions are told at once."), note]

    def perform(self, console: Console, params: Params) -> defer.Deferred:
        return console.core.add_friends([(params["user"], params["friend"])])


class RemoveFriend(ConfirmedAction):
    name, button, done, editable = "remove-friend", "End the friendship", "friend-removed", ()

    def read(self, console: Console, request) -> defer.Deferred:
        return defer.succeed(_user_and(console, request, "friend", "friend"))

    def question(self, params: Params) -> Any:
        return tags.p("End the friendship of ", tags.strong(params["user"]), " and ",
                      tags.strong(params["friend"]), "? Each is removed from the other's "
                      "roster and stops receiving the other's events.")

    def perform(self, console: Console, params: Params) -> defer.Deferred:
        return console.core.remove_friends([(params["user"], params["friend"])])


class Kick(ConfirmedAction):
    name, button, done, editable = "kick", "Disconnect it", "kicked", ()

    def read(self, console: Console, request) -> defer.Deferred:
        params, problems = _user_and(console, request, "", "")
        key = (arg(request, "session") or "")[:64]
        params["session"] = key
        session = next((s for s in console.core.router.sessions(params["user"])
                        if session_key(s) == key), None) if params["user"] else None
        if not problems and session is None:
            problems.append("That session is no longer connected.")
        params["found"] = session
        return defer.succeed((params, problems))

    def question(self, params: Params) -> Any:
        session = params["found"]
        return tags.p("Disconnect the ", tags.strong(session.protocol), " session ",
                      tags.strong(session.label), " of ", tags.strong(params["user"]), "?")

    def perform(self, console: Console, params: Params) -> defer.Deferred:
        params["found"].close("kicked by admin")
        return defer.succeed(None)


class ResetPassword(ConfirmedAction):
    name, button, done, editable = "reset-password", "Set the password", "password-reset", ()

    @defer.inlineCallbacks
    def read(self, console: Console, request):
        params, problems = _user_and(console, request, "", "")
        if not problems and not (yield console.core.accounts.exists(params["user"])):
            problems.append(f"There is no account named {params['user']}.")
        return params, problems

    def check_inputs(self, request, params: Params) -> list[str]:
        password, repeat = arg(request, "password") or "", arg(request, "repeat") or ""
        params["password"] = password
        if len(password) < MIN_PASSWORD:
            return [f"The password needs at least {MIN_PASSWORD} characters."]
        if len(password) > MAX_PASSWORD:
            return [f"The password may have at most {MAX_PASSWORD} characters."]
        if password != repeat:
            return ["The two passwords differ."]
        return []

    def question(self, params: Params) -> Any:
        return tags.p("Set a new password for ", tags.strong(params["user"]),
                      "? Their current sessions stay connected; the next login needs the new "
                      "password.")

    def inputs(self) -> list[Tag]:
        return [tags.label("New password", tags.input(
                    name="password", type="password", required="required",
                    autocomplete="new-password", minlength=str(MIN_PASSWORD))),
                tags.label("Repeat it", tags.input(
                    name="repeat", type="password", required="required",
                    autocomplete="new-password"))]

    def perform(self, console: Console, params: Params) -> defer.Deferred:
        return console.core.accounts.set_password(params["user"], params["password"])


ACTIONS = {a.name: a for a in (AddFriend(), RemoveFriend(), Kick(), ResetPassword())}
PUBLIC_PARAMS = ("user", "friend", "session")


def _cancel(params: Params) -> Tag:
    user = params.get("user")
    return tags.a("Cancel", href=href("/user", jid=user) if user else "/")


def _public(params: Params) -> dict[str, str]:
    return {k: str(params[k]) for k in PUBLIC_PARAMS if k in params}


def _cannot(action: ConfirmedAction, params: Params, problems: list[str]) -> Page:
    """The problems, and a form to correct the fields that can be corrected."""
    fields = _public(params)
    retry = tags.form(
        *hidden(action=action.name, **{k: v for k, v in fields.items()
                                       if k not in action.editable}),
        *[tags.label(name.capitalize(), tags.input(name=name, value=fields.get(name, ""),
                                                   maxlength=str(MAX_QUERY)))
          for name in action.editable],
        tags.button("Check again", type="submit") if action.editable else "", " ",
        _cancel(params), method="get", action="/confirm")
    return Page("Cannot do that", [errors(problems), retry], 400)


def _confirmation(action: ConfirmedAction, params: Params, problems: list[str],
                  login, status: int = 200) -> Page:
    fields = _public(params)
    back = _cancel(params)
    form = post_form("/action", login, *hidden(action=action.name, **fields),
                     *action.inputs(),
                     tags.button(action.button, type="submit", class_="confirm"), " ", back,
                     class_="confirmation")
    return Page("Please confirm", [errors(problems), action.question(params), form], status)


@defer.inlineCallbacks
def _read_action(console: Console, request):
    """Fires ``(action, params, None)``, or ``(None, None, page)`` explaining why not."""
    action = ACTIONS.get(arg(request, "action") or "")
    if action is None:
        return None, None, Page("Cannot do that", errors(["Unknown action."]), 400)
    params, problems = yield action.read(console, request)
    if problems:
        return None, None, _cannot(action, params, problems)
    return action, params, None


def register(console: Console) -> None:
    @console.route("GET", "/confirm")
    @defer.inlineCallbacks
    def confirm(console: Console, request, login):
        action, params, refusal = yield _read_action(console, request)
        if refusal is not None:
            return refusal
        return _confirmation(action, params, [], login)

    @console.route("POST", "/action")
    @defer.inlineCallbacks
    def perform(console: Console, request, login):
        action, params, refusal = yield _read_action(console, request)
        if refusal is not None:
            return refusal
        problems = action.check_inputs(request, params)
        if problems:
            return _confirmation(action, params, problems, login, 400)
        yield action.perform(console, params)
        log.info("webadmin: {admin} did {action} {params}", admin=login.admin,
                 action=action.name, params={k: params[k] for k in PUBLIC_PARAMS if k in params})
        return Page.redirect(href("/user", jid=params["user"], done=action.done))
