"""HTTP File Upload (XEP-0363): the ``upload.<domain>`` service that hands out slots.

The server's disco#items lists the service; its disco#info says ``store/file`` and the
largest file (a XEP-0128 form). A slot request is answered with the PUT and GET URLs of
``core.uploads`` (:mod:`presenced.uploads`), which the HTTP door then serves.
"""

from __future__ import annotations

import presenced.wokkel_compat  # noqa: F401  (before any wokkel import)

from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish
from wokkel import data_form, disco

from presenced.uploads import SlotRefused, valid_content_type
from presenced.xmpp.features import FeatureHandler

if TYPE_CHECKING:
    from presenced.xmpp.session import C2SSession

NS_UPLOAD = "urn:xmpp:http:upload:0"
DEFAULT_TYPE = "application/octet-stream"


class UploadHandler(FeatureHandler):
    service = "upload"
    routes = {f"iq-get/upload/{NS_UPLOAD}:request": "on_request"}

    def service_hosts(self) -> list[str]:
        return super().service_hosts() if self.core.uploads.enabled else []

    def getDiscoInfo(self, requestor, target, nodeIdentifier=""):
        if nodeIdentifier or target.user or target.host not in self.service_hosts():
            return []
        form = data_form.Form("result", formNamespace=NS_UPLOAD)
        form.addField(data_form.Field(var="max-file-size",
                                      value=str(self.core.uploads.max_file_size)))
        return [disco.DiscoIdentity("store", "file", "HTTP File Upload"),
                disco.DiscoFeature(NS_UPLOAD), form]

    def getDiscoItems(self, requestor, target, nodeIdentifier=""):
        if (nodeIdentifier or target.user or target.host not in self.server.domains
                or not self.core.uploads.enabled):
            return []
        return [disco.DiscoItem(JID(f"upload.{target.host}"), name="HTTP File Upload")]

    def on_request(self, session: "C2SSession", iq: domish.Element):
        request = iq.firstChildElement()
        filename = request.getAttribute("filename", "")
        size_text = request.getAttribute("size", "")
        content_type = request.getAttribute("content-type") or DEFAULT_TYPE
        if not filename or not size_text.isdigit() or int(size_text) <= 0:
            session.error(iq, "bad-request", "a slot request needs a filename and a size in "
                                             "bytes above 0")
            return None
        if not valid_content_type(content_type):
            session.error(iq, "bad-request", "content-type must be a MIME type (type/subtype)")
            return None
        return defer.ensureDeferred(self._grant(session, iq, filename, int(size_text),
                                                content_type))

    async def _grant(self, session: "C2SSession", iq: domish.Element, filename: str,
                     size: int, content_type: str) -> None:
        uploads = self.core.uploads
        try:
            slot = await uploads.grant(session.user, filename, size, content_type)
        except SlotRefused as refused:
            session.send(_refusal(iq, refused))
            return
        answer = domish.Element((NS_UPLOAD, "slot"))
        answer.addElement("put")["url"] = uploads.put_url(slot)
        answer.addElement("get")["url"] = uploads.get_url(slot)
        session.result(iq, answer)


def _refusal(iq: domish.Element, refused: SlotRefused) -> domish.Element:
    """The error of XEP-0363 section 5: ``file-too-large`` with the limit, or a quota."""
    detail = None
    if refused.max_size is not None:
        detail = domish.Element((NS_UPLOAD, "file-too-large"))
        detail.addElement("max-file-size", content=str(refused.max_size))
    kind = "wait" if refused.condition == "resource-constraint" else "modify"
    error = StanzaError(refused.condition, type=kind, text=refused.text, appCondition=detail)
    return error.toResponse(iq)
