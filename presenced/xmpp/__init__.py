"""XMPP client-to-server front door (RFC 6120/6121) on twisted.words XML streams.

How the pieces fit, and what a feature module (PEP, caps, ...) builds on:

**Streams and sessions.** :class:`presenced.xmpp.stream.C2SStream` (a ``twisted.words.xish``
XML stream) negotiates STARTTLS, SASL and resource binding; web clients' streams (RFC 7395
WebSocket, BOSH: :mod:`presenced.xmpp.web`) are the same class with another framing
(``stream.TCPFraming``), so features never tell them apart. A bound resource is a
:class:`presenced.xmpp.session.C2SSession`, an ``ISession`` in ``core.router`` with
``protocol == "xmpp"`` and ``label == resource``. Useful attributes and methods::

    session.jid          # twisted.words JID of the full JID (user@domain/resource)
    session.user         # bare JID as str ("alice@localhost")
    session.full         # full JID as str
    session.presence     # last available <presence/> domish.Element the client sent, or None
    session.available    # True between initial available presence and unavailable
    session.priority     # int
    session.server       # the C2SServer (features, core, dispatch)
    session.send(obj)    # send a domish.Element, str or bytes to the client
    session.write(data)  # one stanza's bytes (stream management counts what goes here)
    session.request(iq)  # send an <iq type='get'/'set'> to the client -> Deferred[Element]
                         #   (fires with the result element; errbacks with StanzaError)

Local XMPP sessions of a user: ``presenced.xmpp.session.xmpp_sessions(core, user)`` (the
router's ``core.router.sessions(user)`` filtered by protocol ``"xmpp"``); available ones:
``available_sessions(core, user)``. The server (``session.server``) also offers
``find_session(parse_address(jid))`` for one full JID. Whether an account exists, and
passwords, are the core's: ``core.accounts.exists(user)`` (the store, or the extauth
program's ``isuser``, the same answer every door gets). ``presenced.xmpp.session.presence_bytes(other,
to)`` is a resource's current presence as a stanza for ``to``.

Rendering of a stanza for the wire: :func:`presenced.xmpp.stanzas.to_bytes` (fast path for
plain elements) -- serialise once per routed stanza, write the bytes to each recipient.

**Feature handlers.** Every feature is a :class:`presenced.xmpp.features.FeatureHandler`
(a wokkel ``XMPPHandler`` implementing wokkel's ``IDisco``) listed ONCE in
``presenced.xmpp.service.FEATURES``, the door's composition root; adding a feature is adding
its class there. Handlers never reach into each other: they meet through the hooks below. A handler is
created once per server (not per connection: sessions stay small) with ``(server)`` and
declares the stanzas it answers in ``routes``, Prosody style::

    routes = {"iq-get/host/urn:xmpp:ping:ping": "on_ping"}

Event names are ``iq-{get|set}/{target}/{namespace}:{child element name}`` for IQs and
``{message|presence}/{target}`` for the others, where *target* is ``host`` (addressed to a
local domain), ``self`` (no ``to`` or the sender's own bare JID), ``bare`` (another account's
bare JID) or ``full`` (a full JID). A handler that is a service of its own on a subdomain
declares ``service = "upload"``: every address at one of its ``service_hosts()``
(``upload.localhost``, ``room@conference.localhost/nick``) has that label as its target
(``iq-get/upload/urn:xmpp:http:upload:0:request``), and IQs no service route takes fall back
to ``iq-get/service/...`` (disco answers for every service). The method is called as ``method(session, stanza)``; it
may return a Deferred (errors become ``internal-server-error``). An IQ nobody routes gets
``service-unavailable``. Helpers: ``session.result(iq, child=None)``,
``session.error(stanza, condition)`` (see :mod:`presenced.xmpp.stanzas`).

A handler may also render router events of its own type for XMPP sessions:
``event_renderers = {"tune": "render_tune"}`` -> ``method(session, event)`` is called from
``session.deliver(event)`` for each XMPP session the router hands the event to.

**Hooks** (``core.hooks``): ``xmpp-presence-broadcasting(session, presence_element)``
before a resource's available presence is broadcast (a handler may add children: the
XEP-0153 photo hash); ``xmpp-available(session, presence_element)`` after a resource
sent available presence (initial or changed; ``session.presence`` is already set);
``xmpp-unavailable(session, status)`` when it goes unavailable or disconnects (``status``:
the text its unavailable presence gave, or "");
``xmpp-bound(session)`` is collected after resource binding: a handler may return a
Deferred, and the session handles the client's stanzas once they have fired (its reading
paused meanwhile; the XEP-0153 hash is read so); ``xmpp-session-ended(session)`` when the
session is over (its connection gone, or -- with stream management -- not resumed in time);
``xmpp-unacknowledged(session, [(stanza_bytes, time_sent)])`` when a stream-managed session
(:mod:`presenced.xmpp.sm`) ended with stanzas the client never acknowledged (messages keeps
the messages offline); ``xmpp-initial-backlog(session)`` is collected (``hooks.collect``) on
initial presence: each handler returns a Deferred of stanzas to send after the probes
(offline messages, pubsub authorization requests still pending);
``xmpp-roster-removing(user, contact, item)`` is collected before a roster item is removed
(the subscription protocol cancels both ways);
``xmpp-contact-linked(session, contact, linked)`` when an admin made or unmade a friend;
``xmpp-message-out(session, data, kind)`` when a client sent a message (``data``: the
stanza as serialised); ``xmpp-message-archiving(sender, to, data, kind,
refused_if_blocked)`` is collected before a client's message to ``to`` (a bare JID) is
delivered: a handler that archives it answers ``{owner: id}`` (the archive,
:mod:`presenced.xmpp.mam`), and the copies carry those ids as XEP-0359 ``<stanza-id/>``;
``xmpp-message-in(recipient, data, kind)`` when a message to a full JID reached that resource, ``xmpp-message-passed-over(session, event)`` when the priority
rules kept a bare-JID message from a resource (carbons); ``xmpp-vcard-stored(session,
vcard_element)`` after a client stored its vCard (avatar hashes).

Beyond routes and renderers a handler may declare ``nonza_routes`` (``{(namespace, name):
method}`` for top-level elements that are not stanzas, XEP-0352's ``<active/>``),
``stream_features`` (elements offered after authentication), append to
``server.stanza_filters`` (``f(session, stanza, address) -> True`` when it refused a stanza a
client addressed to a user) or put a session in ``server.holds`` (``session -> hold(session,
event) -> True`` to keep an event back).

**Disco.** disco#info/#items for the server (``to`` = a domain) and for accounts (``to`` = a
bare JID) are assembled by :mod:`presenced.xmpp.disco` from every handler's
``getDiscoInfo(requestor, target, nodeIdentifier)`` / ``getDiscoItems`` (wokkel ``IDisco``;
``target.user`` is None for the server, set for an account; ``target.host`` is a service
host for a service), exactly as wokkel's ``DiscoHandler`` does.
"""
