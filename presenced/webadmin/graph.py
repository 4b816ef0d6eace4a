"""The subscription graph around one user: who follows them, whom they follow, drawn as a
server-side SVG (no script) with the full lists beside it.

Followers are the user's subscribers (they receive the user's events); following are the
user's subscriptions. Mutual edges are friends. The drawing shows at most ``DRAWN`` neighbours;
every node links to its own graph.
"""

from __future__ import annotations

import math
from typing import Callable

from twisted.internet import defer
from twisted.web.template import Tag, tags

from presenced.webadmin.console import Console, arg
from presenced.webadmin.layout import Page, errors, href, user_link
from presenced.webadmin.users import parse_user, search_form, user_list

DRAWN = 40
SIZE = 640
RADIUS = 250



def _svg_tag(name: str) -> Callable[..., Tag]:
    """SVG is not HTML: twisted's ``tags`` knows HTML names only, so these are made by name."""
    return lambda *children, **attributes: Tag(name)(*children, **attributes)


svg, g, line, circle, text, a, title, defs, marker, path = (
    _svg_tag(name) for name in ("svg", "g", "line", "circle", "text", "a", "title", "defs",
                                "marker", "path"))


def drawing(user: str, followers: set[str], following: set[str]) -> Tag:
    """``user`` in the middle, neighbours on a circle; arrows point the way events flow."""
    mutual = followers & following
    neighbours = sorted(mutual) + sorted(followers - mutual) + sorted(following - mutual)
    neighbours = neighbours[:DRAWN]
    centre = SIZE / 2
    arrow = marker(path(d="M0,0 L10,5 L0,10 z"), id="arrow", viewBox="0 0 10 10", refX="22",
                   refY="5", markerWidth="8", markerHeight="8", orient="auto")
    edges, nodes = [], []
    for index, other in enumerate(neighbours):
        angle = 2 * math.pi * index / max(len(neighbours), 1) - math.pi / 2
        x, y = centre + RADIUS * math.cos(angle), centre + RADIUS * math.sin(angle)
        kind = "mutual" if other in mutual else "follower" if other in followers else "following"
        start, end = ((x, y), (centre, centre)) if kind == "follower" else ((centre, centre), (x, y))
        edges.append(line(x1=f"{start[0]:.1f}", y1=f"{start[1]:.1f}", x2=f"{end[0]:.1f}",
                          y2=f"{end[1]:.1f}", class_=f"edge {kind}",
                          **{"marker-end": "url(#arrow)"}))
        if kind == "mutual":
            edges.append(line(x1=f"{x:.1f}", y1=f"{y:.1f}", x2=f"{centre:.1f}",
                              y2=f"{centre:.1f}", class_="edge mutual",
                              **{"marker-end": "url(#arrow)"}))
        anchor = "start" if math.cos(angle) >= 0 else "end"
        nodes.append(a(circle(cx=f"{x:.1f}", cy=f"{y:.1f}", r="8", class_=f"node {kind}"),
                       text(other, x=f"{x + (12 if anchor == 'start' else -12):.1f}",
                            y=f"{y + 4:.1f}", **{"text-anchor": anchor}),
                       title(f"{other} ({kind})"), href=href("/graph", jid=other)))
    me = g(circle(cx=str(centre), cy=str(centre), r="12", class_="node self"),
           text(user, x=str(centre), y=str(centre + 30), **{"text-anchor": "middle"}))
    return svg(defs(arrow), g(*edges), g(*nodes), me, xmlns="http://www.w3.org/2000/svg",
               viewBox=f"-200 0 {SIZE + 400} {SIZE}", class_="graph", role="img",
               **{"aria-label": f"subscription graph of {user}"})


def register(console: Console) -> None:
    @console.route("GET", "/graph")
    @defer.inlineCallbacks
    def graph(console: Console, request, login):
        core = console.core
        user, problems = parse_user(core, arg(request, "jid"))
        if user is None:
            return Page("Subscription graph", [errors(problems), search_form("")], 400)
        followers, following = yield defer.gatherResults(
            [core.store.get_subscribers(user), core.store.get_subscriptions(user)],
            consumeErrors=True).addErrback(lambda f: f.value.subFailure)
        followers, following = set(followers), set(following)
        mutual = followers & following
        shown = min(DRAWN, len(followers | following))
        return Page(f"Subscription graph of {user}", [
            tags.p(user_link(user, core.router.is_online(user)), ": ",
                   f"{len(followers)} follower(s), {len(following)} following, "
                   f"{len(mutual)} mutual. Arrows show which way events flow",
                   f" (drawing the first {shown})." if shown < len(followers | following)
                   else ".", class_="summary"),
            tags.p(tags.span("■ mutual", class_="key mutual"), " ",
                   tags.span("■ follower only", class_="key follower"), " ",
                   tags.span("■ following only", class_="key following"), class_="legend"),
            drawing(user, followers, following),
            tags.div(
                tags.section(tags.h2(f"Followers ({len(followers)})"),
                             user_list(core, list(followers))),
                tags.section(tags.h2(f"Following ({len(following)})"),
                             user_list(core, list(following))),
                class_="columns"),
        ])
