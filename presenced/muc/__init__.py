"""Multi-user chat rooms (XEP-0045's model), a core service every door uses: the XMPP door
serves them on ``conference.<domain>``, the Thrift admin creates and lists them, the IRC
bridge mirrors a channel into one. :mod:`presenced.muc.room` decides (who may join, speak,
kick); :mod:`presenced.muc.service` keeps the rooms, persists them in a capability store and
sends what happened to the occupants as router events (:mod:`presenced.muc.events`)."""
