"""One room's state and rules (XEP-0045 5): occupants by nick, affiliations by bare JID,
configuration, subject and the history a newcomer is shown.

Nothing here does I/O: :class:`Room` answers "may this happen, and what changes", raising
:class:`RoomError` (an XMPP-style condition every door can translate) when it may not. The
service (:mod:`presenced.muc.service`) turns the changes into events and stores them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

AFFILIATIONS = ("owner", "admin", "member", "none", "outcast")
ROLES = ("moderator", "participant", "visitor", "none")
WHOIS = ("moderators", "anyone")
_RANK = {"owner": 4, "admin": 3, "member": 2, "none": 1, "outcast": 0}

# Status codes (XEP-0045 15.6.2) the service sends.
SELF = 110
NON_ANONYMOUS = 100
CREATED = 201
NICK_CHANGED = 303
BANNED = 301
KICKED = 307
CONFIG_CHANGED = 104


class RoomError(Exception):
    """A refusal, as an XMPP stanza error condition (``conflict``, ``forbidden``,
    ``not-authorized``, ``registration-required``, ``service-unavailable``,
    ``item-not-found``, ``not-allowed``, ``bad-request``, ``not-acceptable``) and a text."""

    def __init__(self, condition: str, text: Optional[str] = None):
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text


@dataclass
class RoomConfig:
    """What the owner's form (``muc#roomconfig``) sets; ``max_occupants`` 0 means the
    service's ``[muc] max_occupants``."""

    name: str = ""
    description: str = ""
    persistent: bool = False
    public: bool = True
    members_only: bool = False
    password: str = ""
    moderated: bool = False
    max_occupants: int = 0
    whois: str = "moderators"  # who sees occupants' real JIDs: "moderators" or "anyone"
    history_length: int = 20
    change_subject: bool = False  # participants may change the subject

    def checked(self, max_occupants: int, max_history: int) -> "RoomConfig":
        """This configuration, or :class:`RoomError` ``not-acceptable`` naming the field."""
        if self.whois not in WHOIS:
            raise RoomError("not-acceptable", f"whois must be one of {', '.join(WHOIS)}")
        if not 0 <= self.max_occupants <= max_occupants:
            raise RoomError("not-acceptable", f"max occupants is 1 to {max_occupants}")
        if not 0 <= self.history_length <= max_history:
            raise RoomError("not-acceptable", f"history length is 0 to {max_history}")
        return self


@dataclass
class Occupant:
    """Someone in the room under ``nick``: ``jid`` is the real full JID (an XMPP resource,
    or a door's own address such as the IRC bridge's); ``presence`` the door's form of
    their presence (XMPP: the children of the client's last presence)."""

    nick: str
    jid: str
    role: str
    affiliation: str
    occupant_id: str
    presence: bytes = b""

    @property
    def bare(self) -> str:
        return self.jid.partition("/")[0]


@dataclass
class Said:
    """One message of the room's history (what a newcomer is shown, XEP-0045 7.2.15)."""

    nick: str
    body: Optional[str]
    subject: Optional[str]
    stanza: Optional[bytes]
    occupant_id: str
    when: float = field(default_factory=time.time)
    archive_id: Optional[str] = None  # its id in the room's archive (XEP-0359 stanza id)


def bare(jid: str) -> str:
    return jid.partition("/")[0]


class Room:
    """One room: ``jid`` is ``name@conference.domain``."""

    def __init__(self, jid: str, config: RoomConfig,
                 affiliations: Optional[dict[str, str]] = None,
                 subject: str = "", subject_by: str = "", history_limit: int = 100):
        self.jid = jid
        self.config = config
        self.affiliations: dict[str, str] = dict(affiliations or {})
        self.subject = subject
        self.subject_by = subject_by
        self.occupants: dict[str, Occupant] = {}  # nick -> occupant
        self.nicks: dict[str, str] = {}  # real full JID -> nick
        self.history: deque[Said] = deque(maxlen=history_limit)

    # --- persistence -------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({"config": dataclasses.asdict(self.config),
                           "affiliations": self.affiliations,
                           "subject": self.subject, "subject_by": self.subject_by},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, jid: str, text: str, history_limit: int) -> "Room":
        doc: dict[str, Any] = json.loads(text)
        known = {f.name for f in dataclasses.fields(RoomConfig)}
        config = RoomConfig(**{k: v for k, v in doc["config"].items() if k in known})
        return cls(jid, config, doc.get("affiliations"), doc.get("subject", ""),
                   doc.get("subject_by", ""), history_limit)

    # --- who is who ------------------------------------------------------------------------

    def affiliation(self, jid: str) -> str:
        return self.affiliations.get(bare(jid), "none")

    def occupant(self, jid: str) -> Optional[Occupant]:
        """The occupant a real full JID is, or None."""
        nick = self.nicks.get(jid)
        return None if nick is None else self.occupants[nick]

    def sees_real_jids(self, viewer: Occupant) -> bool:
        return self.config.whois == "anyone" or viewer.role == "moderator"

    def default_role(self, affiliation: str) -> str:
        if affiliation in ("owner", "admin"):
            return "moderator"
        if self.config.moderated and affiliation == "none":
            return "visitor"
        return "participant"

    # --- changes ---------------------------------------------------------------------------

    def admit(self, nick: str, jid: str, password: Optional[str], occupant_id: str,
              presence: bytes, max_occupants: int) -> Occupant:
        """Let ``jid`` in as ``nick`` (XEP-0045 7.2), or raise why not."""
        affiliation = self.affiliation(jid)
        if affiliation == "outcast":
            raise RoomError("forbidden", "you are banned from this room")
        if nick in self.occupants:  # another resource of the same account too: one each
            raise RoomError("conflict", "that nickname is already in use")
        if self.config.members_only and _RANK[affiliation] < _RANK["member"]:
            raise RoomError("registration-required", "this room is for members only")
        if self.config.password and password != self.config.password and \
                affiliation not in ("owner", "admin"):
            raise RoomError("not-authorized", "a password is required")
        limit = min(self.config.max_occupants or max_occupants, max_occupants)
        if len(self.occupants) >= limit and affiliation not in ("owner", "admin"):
            raise RoomError("service-unavailable", f"the room is full ({limit} occupants)")
        occupant = Occupant(nick, jid, self.default_role(affiliation), affiliation,
                            occupant_id, presence)
        self.occupants[nick] = occupant
        self.nicks[jid] = nick
        return occupant

    def remove(self, occupant: Occupant) -> None:
        self.occupants.pop(occupant.nick, None)
        self.nicks.pop(occupant.jid, None)

    def rename(self, occupant: Occupant, nick: str) -> None:
        taken = self.occupants.get(nick)
        if taken is not None and taken is not occupant:
            raise RoomError("conflict", "that nickname is already in use")
        del self.occupants[occupant.nick]
        occupant.nick = nick
        self.occupants[nick] = occupant
        self.nicks[occupant.jid] = nick

    def may_speak(self, occupant: Occupant) -> None:
        if occupant.role == "visitor":
            raise RoomError("forbidden", "visitors have no voice in this moderated room")

    def may_set_subject(self, occupant: Occupant) -> None:
        if occupant.role != "moderator" and not (self.config.change_subject
                                                 and occupant.role == "participant"):
            raise RoomError("forbidden", "only moderators may change the subject")

    def may_set_role(self, actor: Occupant, target: Occupant, role: str) -> None:
        """XEP-0045 8 and 9: moderators kick and grant or revoke voice; nobody changes the
        role of someone ranked above them, and owners and admins stay moderators."""
        if role not in ROLES:
            raise RoomError("bad-request", f"role must be one of {', '.join(ROLES)}")
        if actor.role != "moderator":
            raise RoomError("forbidden", "only moderators change roles")
        if role == "moderator" and actor.affiliation not in ("owner", "admin"):
            raise RoomError("forbidden", "only admins and owners grant moderator")
        if _RANK[target.affiliation] >= _RANK["admin"] and \
                _RANK[target.affiliation] >= _RANK[actor.affiliation]:
            raise RoomError("not-allowed", "that occupant's role cannot be changed by you")

    def may_set_affiliation(self, actor_affiliation: str, target: str,
                            affiliation: str) -> None:
        """XEP-0045 9 and 10: admins manage members and outcasts, owners everything;
        the last owner stays."""
        if affiliation not in AFFILIATIONS:
            raise RoomError("bad-request",
                            f"affiliation must be one of {', '.join(AFFILIATIONS)}")
        current = self.affiliation(target)
        if actor_affiliation == "owner":
            if current == "owner" and affiliation != "owner" and \
                    sum(1 for a in self.affiliations.values() if a == "owner") == 1:
                raise RoomError("conflict", "a room keeps at least one owner")
            return
        if actor_affiliation != "admin":
            raise RoomError("forbidden", "only admins and owners change affiliations")
        if _RANK[current] >= _RANK["admin"] or _RANK[affiliation] >= _RANK["admin"]:
            raise RoomError("not-allowed", "only owners change admins and owners")

    def set_affiliation(self, target: str, affiliation: str) -> list[Occupant]:
        """Record it; returns the occupants of that bare JID (their role may change)."""
        if affiliation == "none":
            self.affiliations.pop(target, None)
        else:
            self.affiliations[target] = affiliation
        changed = [o for o in self.occupants.values() if o.bare == target]
        for occupant in changed:
            occupant.affiliation = affiliation
            if affiliation != "outcast":
                occupant.role = self.default_role(affiliation)
        return changed

    def remember(self, said: Said) -> None:
        if self.config.history_length:
            self.history.append(said)

    def recent(self, max_stanzas: Optional[int], seconds: Optional[float],
               since: Optional[float]) -> Iterable[Said]:
        """The history a joining client asked for (XEP-0045 7.2.15), at most the room's
        configured length."""
        entries = list(self.history)[-self.config.history_length:] \
            if self.config.history_length else []
        now = time.time()
        if seconds is not None:
            entries = [e for e in entries if e.when >= now - seconds]
        if since is not None:
            entries = [e for e in entries if e.when > since]
        if max_stanzas is not None:
            entries = entries[-max_stanzas:] if max_stanzas > 0 else []
        return entries
