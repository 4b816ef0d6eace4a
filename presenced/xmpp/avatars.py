"""vCard-based avatars (XEP-0153): the server adds the hash of an account's vCard photo to the
presence it broadcasts, so friends' clients show the avatar even when the owner's client never
announces it (ejabberd's mod_vcard_xupdate does the same).

A client's own ``<x xmlns='vcard-temp:x:update'/>`` passes untouched: with a ``<photo/>`` it
states the hash itself, and an empty ``<x/>`` says it is not ready to advertise one. Presence
without it gets ``<x><photo>SHA-1</photo></x>`` (an empty ``<photo/>``: no avatar) once the
hash is known: it is read from the stored vCard when a resource binds (the session handles
the client's next stanzas once the read is in, so even a first presence sent without waiting
for the bind result carries it) and kept in memory while the user has a resource on this node. A vCard stored on any node updates the hash everywhere through an
:data:`AVATAR_CHANGED` event to the user's sessions.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Optional

from twisted.internet import defer
from twisted.words.xish import domish

from presenced.events import Event
from presenced.store import PRIVATE_STORE
from presenced.xmlparse import parse_element
from presenced.xmpp.features import FeatureHandler
from presenced.xmpp.session import xmpp_sessions
from presenced.xmpp.vcard import KEY as VCARD_KEY, NS_VCARD

NS_UPDATE = "vcard-temp:x:update"
AVATAR_CHANGED = "xmpp-avatar-hash"  # router event to the user's sessions; payload: photo


def photo_hash(vcard: Optional[domish.Element]) -> str:
    """The hex SHA-1 of a vCard's ``PHOTO/BINVAL`` image, or '' when it has none (or one that
    is not base64: no image anyone could show)."""
    if vcard is None:
        return ""
    for photo in vcard.elements(NS_VCARD, "PHOTO"):
        for binval in photo.elements(NS_VCARD, "BINVAL"):
            try:
                data = base64.b64decode("".join(str(binval).split()), validate=True)
            except (binascii.Error, ValueError):
                return ""
            return hashlib.sha1(data).hexdigest() if data else ""
    return ""


def has_update(presence: domish.Element) -> bool:
    return any(True for _ in presence.elements(NS_UPDATE, "x"))


class VCardAvatarHandler(FeatureHandler):
    event_renderers = {AVATAR_CHANGED: "hash_changed"}

    def attached(self) -> None:
        self.hashes: dict[str, str] = {}  # user with a resource here -> photo hash
        hooks = self.core.hooks
        hooks.add("xmpp-bound", self._bound)
        hooks.add("xmpp-session-ended", self._ended)
        hooks.add("xmpp-vcard-stored", self._stored)
        hooks.add("xmpp-presence-broadcasting", self._stamp)

    def _bound(self, session) -> Optional[defer.Deferred]:
        """Read the hash; the session's stanzas wait for it (``xmpp-bound`` is collected)."""
        user = session.user
        if user in self.hashes or self.core.store is None:  # no store: in-memory door tests
            return None
        d = self.core.store.open_map(PRIVATE_STORE).get(user, VCARD_KEY)
        d.addCallback(self._loaded, user)
        d.addErrback(lambda f: self.log.failure("reading {user}'s vCard", f, user=user))
        return d

    def _loaded(self, text: Optional[str], user: str) -> None:
        if xmpp_sessions(self.core, user) and user not in self.hashes:
            self.hashes[user] = photo_hash(None if text is None else parse_element(text))

    def _ended(self, session) -> None:
        if all(s is session for s in xmpp_sessions(self.core, session.user)):
            self.hashes.pop(session.user, None)

    def _stored(self, session, vcard: domish.Element) -> None:
        self.core.router.deliver(session.user, Event(AVATAR_CHANGED, session.user,
                                                     {"photo": photo_hash(vcard)}))

    def hash_changed(self, session, event: Event) -> None:
        self.hashes[session.user] = event.payload["photo"]

    def _stamp(self, session, presence: domish.Element) -> None:
        """Add the photo hash to a client's available presence that states none."""
        known = self.hashes.get(session.user)
        if known is None or has_update(presence):
            return
        update = presence.addElement((NS_UPDATE, "x"))
        update.addElement("photo", content=known or None)
