"""The console's page frame and the small helpers every page uses (links, tables, forms).

Pages are built with :mod:`twisted.web.template` tags, which escape every text and attribute
value: a roster name ``<script>`` renders as text. URLs are made with :func:`href` (query
encoding) and nothing reaches a page's JavaScript except through ``data-*`` attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional
from urllib.parse import urlencode

from twisted.python.filepath import FilePath
from twisted.web.template import Element, Tag, XMLFile, renderer, tags

from presenced.webadmin.sessions import AdminLogin

TEMPLATES = FilePath(__file__).sibling("templates")


@dataclass
class Page:
    """What a handler produces: a titled body, or a redirect when ``location`` is set."""

    title: str = ""
    body: Any = ""
    status: int = 200
    location: Optional[str] = None

    @classmethod
    def redirect(cls, location: str) -> "Page":
        return cls(status=303, location=location)


class AdminPage(Element):
    """The frame around every page: navigation, who is logged in, log out."""

    loader = XMLFile(TEMPLATES.child("layout.xml"))

    def __init__(self, page: Page, login: Optional[AdminLogin]):
        super().__init__()
        self.content = page
        self.login = login

    @renderer
    def page(self, request, tag: Tag) -> Tag:
        return tag.fillSlots(title=self.content.title, body=self.content.body)

    @renderer
    def header(self, request, tag: Tag) -> Tag:
        if self.login is None:
            return tag
        return tag(
            tags.nav(tags.a("Overview", href="/"), tags.a("Users", href="/users"),
                     tags.a("API tokens", href="/api-tokens"),
                     tags.a("Metrics", href="/metrics")),
            tags.span(self.login.admin, class_="admin"),
            post_form("/logout", self.login, tags.button("Log out", type="submit"),
                      class_="logout"))


def href(path: str, **params: Any) -> str:
    """``path?k=v`` with the query encoded; parameters that are None are left out."""
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"{path}?{query}" if query else path


def user_link(user: str, online: bool = False) -> Tag:
    link = tags.a(user, href=href("/user", jid=user))
    return tags.span(link, " ", tags.span("online", class_="online")) if online else link


def post_form(action: str, login: AdminLogin, *children: Any, **attributes: str) -> Tag:
    """A POST form carrying the login's CSRF token."""
    return tags.form(tags.input(type="hidden", name="csrf", value=login.csrf), *children,
                     method="post", action=action, **attributes)


def hidden(**fields: str) -> list[Tag]:
    return [tags.input(type="hidden", name=k, value=v) for k, v in fields.items()]


def errors(messages: Iterable[str]) -> Tag:
    """The list of what is wrong with a form (empty when nothing is)."""
    items = [tags.li(m) for m in messages]
    return tags.ul(*items, class_="errors", role="alert") if items else tags.transparent()


def table(headings: Iterable[str], rows: Iterable[Iterable[Any]], empty: str) -> Tag:
    rows = [tags.tr(*(tags.td(cell) for cell in row)) for row in rows]
    if not rows:
        return tags.p(empty, class_="empty")
    return tags.table(tags.thead(tags.tr(*(tags.th(h) for h in headings))), tags.tbody(*rows))


def definitions(pairs: Iterable[tuple[str, Any]], **attributes: str) -> Tag:
    return tags.dl(*(part for term, value in pairs
                     for part in (tags.dt(term), tags.dd(value))), **attributes)
