"""Ad-hoc commands (XEP-0050): what a command is, and the protocol that runs one.

A :class:`Command` declares its node, its name, who may run it and the fields of its form
(wokkel field definitions); :class:`AdHocHandler` lists the commands a requester may run in
disco (``#items`` of the ``commands`` node), answers an ``execute`` without a form with the
form, and runs the command on the submitted form (an ``execute`` or ``complete`` carrying it;
a command without fields runs at once). Every command is one stage, so nothing is kept
between the stages: the ``sessionid`` is handed out and echoed, never stored. A subclass
names its commands in ``commands`` (:mod:`presenced.xmpp.admin`).
"""

from __future__ import annotations

import presenced.wokkel_compat  # noqa: F401  (before any wokkel import)

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet import defer
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.protocols.jabber.jid import InvalidFormat, JID
from twisted.words.xish import domish
from wokkel import data_form, disco

from presenced.xmpp.features import FeatureHandler

if TYPE_CHECKING:
    from presenced.core import Core
    from presenced.xmpp.session import C2SSession

NS_COMMANDS = "http://jabber.org/protocol/commands"
FORM_ERRORS = (TypeError, ValueError, InvalidFormat, data_form.Error)


class CommandRefused(Exception):
    """Raised by :meth:`Command.run`: the command is completed with this error note."""


@dataclass
class Outcome:
    """What a command says when done: a note (``error`` when it refused) and result fields
    (``var -> (type, value)``, a list value for ``*-multi``)."""

    note: str
    failed: bool = False
    fields: dict[str, tuple[str, Any]] = field(default_factory=dict)


class Command:
    """One ad-hoc command. ``fields`` are wokkel field definitions (``{"type", "label",
    "required"}`` by var); :meth:`run` gets the submitted values (JIDs as ``JID``)."""

    node = ""
    name = ""
    form_type = ""     # the FORM_TYPE of its forms ("" for none)
    admin_only = True
    fields: dict[str, dict[str, Any]] = {}

    def __init__(self, core: "Core"):
        self.core = core

    async def run(self, session: "C2SSession", values: dict[str, Any]) -> Outcome:
        raise NotImplementedError

    def form(self) -> data_form.Form:
        form = data_form.Form("form", title=self.name, formNamespace=self.form_type or None)
        for var, definition in self.fields.items():
            form.addField(data_form.Field.fromDict({"var": var, **definition}))
        return form

    def parse(self, submitted: domish.Element) -> dict[str, Any]:
        """The values of a submitted form; ``ValueError`` naming what is wrong or missing."""
        form = data_form.Form.fromElement(submitted)
        if form.formType != "submit":
            raise ValueError("the form must be of type submit")
        form.typeCheck({var: dict(d) for var, d in self.fields.items()}, filterUnknown=True)
        values = form.getValues()
        missing = [var for var, d in self.fields.items() if d.get("required")
                   and values.get(var) in (None, "", [])]
        if missing:
            raise ValueError(f"required: {', '.join(missing)}")
        return values


class AdHocHandler(FeatureHandler):
    """XEP-0050 on the server's JID, for the :attr:`commands` a subclass lists."""

    commands: tuple[type[Command], ...] = ()
    routes = {f"iq-set/host/{NS_COMMANDS}:command": "on_command"}
    server_features = (NS_COMMANDS,)

    def attached(self) -> None:
        self.by_node = {command.node: command(self.core) for command in self.commands}

    def may_run(self, requestor: JID, command: Command) -> bool:
        """Admin commands for the JIDs of ``[xmpp] admins`` (read at each use: a reload
        applies to the next request)."""
        return not command.admin_only or requestor.userhost() in self.core.config.xmpp.admins

    # --- disco ---------------------------------------------------------------------------

    def getDiscoItems(self, requestor, target, nodeIdentifier=""):
        if nodeIdentifier != NS_COMMANDS or target.user or target.host not in self.server.domains:
            return []
        return [disco.DiscoItem(target, command.node, command.name)
                for command in self.by_node.values() if self.may_run(requestor, command)]

    def getDiscoInfo(self, requestor, target, nodeIdentifier=""):
        command = self.by_node.get(nodeIdentifier)
        if command is None and nodeIdentifier != NS_COMMANDS:
            return super().getDiscoInfo(requestor, target, nodeIdentifier)
        if target.user or target.host not in self.server.domains:
            return []
        if command is None:
            return [disco.DiscoIdentity("automation", "command-list")]
        if not self.may_run(requestor, command):
            return []
        return [disco.DiscoIdentity("automation", "command-node", command.name),
                disco.DiscoFeature(NS_COMMANDS), disco.DiscoFeature(data_form.NS_X_DATA)]

    # --- execution -----------------------------------------------------------------------

    def on_command(self, session: "C2SSession", iq: domish.Element) -> Optional[defer.Deferred]:
        request = iq.firstChildElement()
        command = self.by_node.get(request.getAttribute("node", ""))
        if command is None:
            session.error(iq, "item-not-found", "no such command")
            return None
        if not self.may_run(session.jid, command):
            session.error(iq, "forbidden", "this command is for the server's administrators")
            return None
        action = request.getAttribute("action", "execute")
        sessionid = request.getAttribute("sessionid") or secrets.token_hex(8)
        if action == "cancel":
            session.result(iq, _answer(command, sessionid, "canceled"))
            return None
        if action not in ("execute", "complete"):
            session.send(_bad(iq, "bad-action", f"{action}: a command here has one stage"))
            return None
        submitted = next(request.elements(data_form.NS_X_DATA, "x"), None)
        if submitted is None and command.fields:
            answer = _answer(command, sessionid, "executing")
            answer.addElement("actions")["execute"] = "complete"
            answer.actions.addElement("complete")
            answer.addChild(command.form().toElement())
            session.result(iq, answer)
            return None
        try:
            values = command.parse(submitted) if submitted is not None else {}
        except FORM_ERRORS as e:
            session.send(_bad(iq, "bad-payload", str(e) or "the form does not fit the command"))
            return None
        return defer.ensureDeferred(self._run(session, iq, command, sessionid, values))

    async def _run(self, session: "C2SSession", iq: domish.Element, command: Command,
                   sessionid: str, values: dict[str, Any]) -> None:
        try:
            outcome = await command.run(session, values)
        except CommandRefused as e:
            outcome = Outcome(str(e), failed=True)
        answer = _answer(command, sessionid, "completed")
        answer.addElement("note", content=outcome.note)["type"] = ("error" if outcome.failed
                                                                  else "info")
        if outcome.fields:
            result = data_form.Form("result", formNamespace=command.form_type or None)
            for var, (kind, value) in outcome.fields.items():
                listed = value if isinstance(value, list) else [value]
                result.addField(data_form.Field(kind, var=var, values=listed))
            answer.addChild(result.toElement())
        session.result(iq, answer)


def _answer(command: Command, sessionid: str, status: str) -> domish.Element:
    answer = domish.Element((NS_COMMANDS, "command"))
    answer["node"] = command.node
    answer["sessionid"] = sessionid
    answer["status"] = status
    return answer


def _bad(iq: domish.Element, condition: str, text: str) -> domish.Element:
    """``bad-request`` with XEP-0050's specific condition."""
    detail = domish.Element((NS_COMMANDS, condition))
    return StanzaError("bad-request", text=text, appCondition=detail).toResponse(iq)
