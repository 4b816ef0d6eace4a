"""The TLS certificates of the c2s door: the configured one, or a self-signed one generated
into the data directory on first start (and logged) so STARTTLS works out of the box; and,
with ``[xmpp] certificate_dir``, one per served domain, chosen by the name the client asks
for in its handshake (SNI)."""

from __future__ import annotations

import datetime
import os
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.logger import Logger

log = Logger()


def generate_self_signed(cert_path: str, key_path: str, domains: list[str]) -> None:
    """Write a self-signed certificate (ECDSA P-256: cheap handshakes; ten years) for
    ``domains``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def _context(cert_pem: bytes, key_pem: bytes) -> SSL.Context:
    """One OpenSSL server context: TLS 1.2 or newer, OpenSSL's default ciphers.

    Not Twisted's ``CertificateOptions``: with the OpenSSL that pyOpenSSL bundles its cipher
    settings make Go clients' handshakes (go-sendxmpp) fail with "internal error".
    """
    pair = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
                        | SSL.OP_NO_TICKET)
    # No session cache: XMPP connections are long-lived, and each cached session would cost
    # memory. OP_NO_TICKET stops TLS 1.2 tickets; under TLS 1.3 OpenSSL still sends its two
    # (stateful) tickets, which no client can resume with while the cache is off, and the
    # bindings pyOpenSSL uses have no SSL_CTX_set_num_tickets to stop them. Stateless tickets
    # (without OP_NO_TICKET) would let a reconnecting client resume: measured 264 us of server
    # CPU per resumed handshake against 330 us per full one, but +15 us on every full one.
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)  # idle connections hold no TLS buffers
    context.use_certificate(pair.original)
    context.use_privatekey(pair.privateKey.original)
    for block in _pem_blocks(cert_pem)[1:]:
        context.add_extra_chain_cert(ssl.Certificate.loadPEM(block).original)
    context.check_privatekey()
    return context


def _load(certificate: str, private_key: str) -> SSL.Context:
    with open(certificate, "rb") as f:
        cert_pem = f.read()
    with open(private_key or certificate, "rb") as f:
        key_pem = f.read()
    return _context(cert_pem, key_pem)


class ServerTLSContext(ssl.ContextFactory):
    """The door's TLS: a default context, and one per domain in ``by_name`` that a client's
    SNI picks (a client names the domain it logs in to); any other name gets the default."""

    def __init__(self, default: SSL.Context, by_name: Optional[dict[str, SSL.Context]] = None):
        self.context = default
        self.by_name = by_name or {}
        default.set_tlsext_servername_callback(self._pick)

    def _pick(self, connection: SSL.Connection) -> None:
        name = (connection.get_servername() or b"").decode("ascii", "replace").lower()
        chosen = self.by_name.get(name)
        if chosen is not None:
            connection.set_context(chosen)

    def getContext(self) -> SSL.Context:
        return self.context

    def replace(self, other: "ServerTLSContext") -> None:
        """Serve ``other``'s certificates from now on. Every new connection (STARTTLS and
        the direct-TLS port) asks :meth:`getContext`; open ones keep the context they got."""
        other.context.set_tlsext_servername_callback(self._pick)
        self.context, self.by_name = other.context, other.by_name


def domain_files(directory: str, domain: str) -> Optional[tuple[str, str]]:
    """The certificate and key of ``domain`` in ``directory``: Let's Encrypt's layout
    (``<domain>/fullchain.pem``, ``privkey.pem``) or Prosody's (``<domain>.crt``,
    ``<domain>.key``); None when neither is there."""
    for cert, key in ((os.path.join(directory, domain, "fullchain.pem"),
                       os.path.join(directory, domain, "privkey.pem")),
                      (os.path.join(directory, f"{domain}.crt"),
                       os.path.join(directory, f"{domain}.key"))):
        if os.path.isfile(cert) and os.path.isfile(key):
            return cert, key
    return None


def context_factory(certificate: str, private_key: str, data_dir: str,
                    domains: list[str], certificate_dir: str = "") -> ServerTLSContext:
    """TLS for the c2s door from the configured PEM files, or from ``<data_dir>/tls``; with
    ``certificate_dir``, a certificate of its own for each of ``domains`` found there."""
    if not certificate:
        directory = os.path.join(data_dir, "tls")
        os.makedirs(directory, exist_ok=True)
        certificate = os.path.join(directory, "xmpp.crt")
        private_key = os.path.join(directory, "xmpp.key")
        if not (os.path.exists(certificate) and os.path.exists(private_key)):
            generate_self_signed(certificate, private_key, domains)
            log.info("xmpp: generated a self-signed certificate for {domains} in {path}",
                     domains=", ".join(domains), path=certificate)
    by_name: dict[str, SSL.Context] = {}
    if certificate_dir:
        for domain in domains:
            files = domain_files(certificate_dir, domain)
            if files is None:
                log.warn("xmpp: no certificate for {domain} in {dir}: it gets the default one",
                         domain=domain, dir=certificate_dir)
                continue
            by_name[domain.lower()] = _load(*files)
        log.info("xmpp: certificates by SNI for {names}",
                 names=", ".join(sorted(by_name)) or "no domain")
    return ServerTLSContext(_load(certificate, private_key), by_name)


# What loading a certificate or key may raise: missing file, bad PEM, key not matching.
LOAD_ERRORS = (OSError, ValueError, SSL.Error, crypto.Error)


def _pem_blocks(pem: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    return [block + marker for block in pem.split(marker) if b"BEGIN CERTIFICATE" in block]
