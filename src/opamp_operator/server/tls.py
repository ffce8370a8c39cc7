"""TLS for the server's listeners: certificates that follow their files on disk, optional
client certificates, and the identity a verified client certificate proves.

cert-manager (or any Secret mounted into the pod) rotates a certificate by swapping the
files under the mount; `ReloadingTLS` reloads them into the same `ssl.SSLContext`, so
every handshake after the reload uses the new certificate while connections already
open keep theirs. A CA bundle can only grow this way (OpenSSL's store has no removal):
adding a CA takes effect at the next reload, removing one at the next restart.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import logging
import ssl
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)


class ClientAuth(StrEnum):
    """Whether a listener asks agents for a certificate (OpenSSL's verify modes)."""

    NONE = "none"
    """No client certificate is asked for."""
    OPTIONAL = "optional"
    """Asked for; one that is presented must verify against the client CA, none is fine."""
    REQUIRE = "require"
    """A certificate that verifies against the client CA, or no handshake."""


_VERIFY = {
    ClientAuth.NONE: ssl.CERT_NONE,
    ClientAuth.OPTIONAL: ssl.CERT_OPTIONAL,
    ClientAuth.REQUIRE: ssl.CERT_REQUIRED,
}


class TLSConfigError(ValueError):
    """The TLS settings cannot work (a flag without its partner, an unreadable file)."""


@dataclass(frozen=True)
class TLSFiles:
    """A listener's certificate, key and client CA as files (PEM)."""

    cert_file: Path | None = None
    """Server certificate chain; None serves plaintext."""
    key_file: Path | None = None
    """The certificate's private key."""
    client_ca_file: Path | None = None
    """CAs that client certificates must chain to."""
    client_auth: ClientAuth = ClientAuth.NONE
    """Whether to ask agents for a client certificate."""
    reload_seconds: float = 10.0
    """How often the files are checked for a rotated certificate."""

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    def check(self) -> None:
        """Refuse combinations that would silently serve less than asked for."""
        if (self.cert_file is None) != (self.key_file is None):
            raise TLSConfigError("--tls-cert-file and --tls-key-file go together")
        if self.client_auth is not ClientAuth.NONE and self.client_ca_file is None:
            raise TLSConfigError(f"--client-auth {self.client_auth} needs --client-ca-file")
        if self.client_ca_file is not None and self.cert_file is None:
            raise TLSConfigError(
                "--client-ca-file needs --tls-cert-file (client certificates need TLS)"
            )
        if self.client_ca_file is not None and self.client_auth is ClientAuth.NONE:
            raise TLSConfigError("--client-ca-file is unused with --client-auth none")
        if self.reload_seconds <= 0:
            raise TLSConfigError("--tls-reload-seconds must be positive")


def _fingerprint(paths: Iterable[Path | None]) -> bytes:
    return _fingerprint_of([p.read_bytes() if p is not None else None for p in paths])


def _fingerprint_of(contents: Iterable[bytes | None]) -> bytes:
    digest = hashlib.sha256()
    for data in contents:
        if data is not None:
            digest.update(data)
            digest.update(b"\0")
    return digest.digest()


def server_context(client_auth: ClientAuth = ClientAuth.NONE) -> ssl.SSLContext:
    """A TLS 1.2+ server context with Python's default (secure) ciphers."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = _VERIFY[client_auth]
    # No TLS 1.3 session tickets: agents (opamp-go, the Collector, the supervisor) keep no
    # session cache, and a restart's reconnect storm finds the old tickets' key gone, so
    # each ticket only costs the handshake an encryption and the agent a record.
    context.num_tickets = 0
    return context


def read_ca_bundle(path: Path) -> str:
    """The CA certificates (PEM) in `path`, checked: a bundle that parses to nothing would
    only show up as every agent failing its handshake."""
    try:
        text = path.read_text()
        x509.load_pem_x509_certificates(text.encode())
    except (OSError, ValueError) as exc:
        raise TLSConfigError(f"{path}: not a readable PEM certificate bundle ({exc})") from exc
    return text


class ReloadingTLS:
    """One listener's SSLContext, reloaded in place when its files change."""

    def __init__(self, files: TLSFiles) -> None:
        files.check()
        if files.cert_file is None or files.key_file is None:
            raise TLSConfigError("ReloadingTLS needs a certificate and a key")
        self.files = files
        self.context = server_context(files.client_auth)
        self._seen = b""
        self.reloads = 0
        try:
            self._load()
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(f"cannot load the TLS files: {exc}") from exc

    def _paths(self) -> tuple[Path | None, ...]:
        return (self.files.cert_file, self.files.key_file, self.files.client_ca_file)

    def _load(self) -> None:
        """Read the files once, check that copy in a scratch context, then load the same
        copy into the live one: OpenSSL installs a certificate before it checks the key
        against it, so a mismatched pair loaded live would leave no usable key and fail
        every handshake; reading twice could check one pair and load another."""
        paths = self._paths()
        contents = [p.read_bytes() if p is not None else None for p in paths]
        seen = _fingerprint_of(contents)
        with tempfile.TemporaryDirectory(prefix="opamp-tls-") as scratch:
            copies = []
            for name, data in zip(("cert", "key", "ca"), contents, strict=True):
                copy = Path(scratch) / name
                if data is not None:
                    copy.touch(mode=0o600)
                    copy.write_bytes(data)
                copies.append(copy if data is not None else None)
            cert, key, ca = copies
            assert cert is not None and key is not None  # noqa: PT018 - ReloadingTLS checked
            server_context().load_cert_chain(cert, key)
            self.context.load_cert_chain(cert, key)
            if ca is not None:
                self.context.load_verify_locations(cafile=ca)
        self._seen = seen

    def reload(self) -> bool:
        """Load the files again when their content changed; True when it did. A
        half-written pair (a key that does not match the certificate yet) keeps the
        certificate in use and is tried again next time."""
        try:
            if _fingerprint(self._paths()) == self._seen:
                return False
            self._load()
        except (OSError, ssl.SSLError) as exc:
            log.error("TLS files changed but cannot be loaded, keeping the old ones: %s", exc)
            return False
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.files.cert_file)
        return True

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.files.reload_seconds)
            self.reload()


@dataclass(frozen=True)
class ClientCertificate:
    """What a client certificate that verified proves: its subject and alternative names."""

    common_name: str
    organizations: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Every name the certificate carries, subject first."""
        return (self.common_name, *self.dns_names, *self.uris, *self.emails)


def client_certificate(peercert: Mapping[str, Any] | None) -> ClientCertificate | None:
    """The identity in `SSLObject.getpeercert()`'s dict, which Python fills only for a
    certificate that verified; None without one."""
    if not peercert:
        return None
    common_name, organizations = "", []
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                common_name = value
            elif key == "organizationName":
                organizations.append(value)
    alt: dict[str, list[str]] = {"DNS": [], "URI": [], "email": []}
    for kind, value in peercert.get("subjectAltName", ()):
        if kind in alt:
            alt[kind].append(value)
    return ClientCertificate(
        common_name,
        tuple(organizations),
        tuple(alt["DNS"]),
        tuple(alt["URI"]),
        tuple(alt["email"]),
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def self_signed(directory: Path, hosts: Iterable[str], purpose: str) -> tuple[Path, Path, bytes]:
    """A CA and a server certificate for `hosts`, written to `directory` as tls.crt and
    tls.key (0600); returns those files and the CA certificate (PEM). For listeners
    whose clients pin the CA or skip verification (the apiserver's webhook calls,
    kubelet probes) when no certificate is mounted."""
    names = sorted(set(hosts))
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"opamp-operator {purpose} CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    certfile, keyfile = directory / "tls.crt", directory / "tls.key"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.touch(mode=0o600)
    keyfile.write_bytes(_pem_key(key))
    return certfile, keyfile, ca.public_bytes(serialization.Encoding.PEM)
