"""Connection discovery (XEP-0156): ``/.well-known/host-meta`` (XRD) and ``host-meta.json``
name the WebSocket and BOSH URLs, so a web client given only a JID finds where to connect.

The URLs are built from ``[xmpp] web_public_url`` when set (behind a reverse proxy that
changes host, port or scheme), otherwise from the request: its Host header, and ``https`` /
``wss`` when it came over TLS.
"""

from __future__ import annotations

import json
from xml.sax.saxutils import quoteattr

from twisted.web import resource
from twisted.web.server import Request

REL_WEBSOCKET = "urn:xmpp:alt-connections:websocket"
REL_BOSH = "urn:xmpp:alt-connections:xbosh"


class ConnectionLinks:
    """The alternative connection methods a host offers, as URLs for one request."""

    def __init__(self, public_url: str, websocket: bool, bosh: bool):
        self.public_url = public_url.rstrip("/")
        self.websocket = websocket
        self.bosh = bosh

    def links(self, request: Request) -> list[tuple[str, str]]:
        if self.public_url:
            base = self.public_url
        else:
            scheme = "https" if request.isSecure() else "http"
            host = (request.getHeader(b"host") or b"localhost").decode("latin-1").strip()
            base = f"{scheme}://{host}"
        ws_base = "ws" + base[len("http"):] if base.startswith("http") else base
        out = []
        if self.websocket:
            out.append((REL_WEBSOCKET, ws_base + "/xmpp-websocket"))
        if self.bosh:
            out.append((REL_BOSH, base + "/http-bind"))
        return out


class HostMeta(resource.Resource):
    """``host-meta`` in XRD form (``json``: ``host-meta.json``, RFC 6415 JRD)."""

    isLeaf = True

    def __init__(self, links: ConnectionLinks, json_form: bool):
        super().__init__()
        self.connection_links = links
        self.json_form = json_form

    def render_GET(self, request: Request) -> bytes:
        links = self.connection_links.links(request)
        # Public facts, fetched by pages of any origin (XEP-0156 asks for CORS).
        request.setHeader(b"access-control-allow-origin", b"*")
        request.setHeader(b"cache-control", b"max-age=3600")
        if self.json_form:
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"links": [{"rel": rel, "href": href} for rel, href in links]},
                              indent=1).encode("utf-8")
        request.setHeader(b"content-type", b"application/xrd+xml; charset=utf-8")
        lines = ["<?xml version='1.0' encoding='utf-8'?>",
                 "<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>"]
        lines.extend(f"  <Link rel={quoteattr(rel)} href={quoteattr(href)}/>"
                     for rel, href in links)
        lines.append("</XRD>\n")
        return "\n".join(lines).encode("utf-8")


class WellKnown(resource.Resource):
    """``/.well-known/``: the two host-meta documents; 404 for anything else."""

    def __init__(self, links: ConnectionLinks):
        super().__init__()
        self.putChild(b"host-meta", HostMeta(links, json_form=False))
        self.putChild(b"host-meta.json", HostMeta(links, json_form=True))
