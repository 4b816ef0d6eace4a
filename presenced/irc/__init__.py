"""The IRC door: an irccat-compatible cat bot sharing presenced's store and router.

See docs/irc.md. ``service.make_service(core)`` builds it; other doors reach it through
``core.features["irc"]`` (:class:`presenced.irc.bot.IRCBot`, ``say(target, text)``) and
``core.features["irc_http"]`` (the HTTP cat resource the web admin mounts).
"""
