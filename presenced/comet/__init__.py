"""Comet HTTP streams: friends' events pushed to browsers and HTTP clients.

See ``docs/comet.md``. Modules: :mod:`.http` (request heads), :mod:`.frames` (wire formats),
:mod:`.replay` (per-user replay buffers), :mod:`.stream` (the lean stream connection),
:mod:`.websocket`, :mod:`.web` (demo page and the rest), :mod:`.door` (what connections
share), :mod:`.service`.
"""
