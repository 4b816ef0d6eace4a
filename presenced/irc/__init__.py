"""The IRC door: an irccat-compatible cat bot sharing presenced's store and router.

See docs/irc.md. ``service.make_service(core)`` builds it; other doors reach it through
``core.irc`` (the bot as a :class:`presenced.core.IIRCAnnouncer`: ``say(target, text)``,
``status()``) and ``core.web_resources[b"irccat"]`` (the HTTP cat resource the web admin
serves).
"""
