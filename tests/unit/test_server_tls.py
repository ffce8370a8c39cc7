"""server/tls.py without a network: TLS settings refused before they can serve less than
asked, certificates that follow their files, and client identities. Handshakes run in
memory (ssl.MemoryBIO pairs), so what is proved is what OpenSSL does with the context the
listener really uses, not what its attributes say."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from opamp_operator.server.tls import (
    ClientAuth,
    ClientCertificate,
    ReloadingTLS,
    TLSConfigError,
    TLSFiles,
    client_certificate,
    read_ca_bundle,
)
from world.pki import CertificateAuthority, KeyPair

HOST = "opamp.test"


def _server_pair(ca: CertificateAuthority) -> KeyPair:
    return ca.issue(HOST, hosts=(HOST, "127.0.0.1"), server=True)


def _client_context(
    ca: CertificateAuthority, client: KeyPair | None = None, tmp: Path | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    if client is not None:
        assert tmp is not None
        context.load_cert_chain(*client.write(tmp, "client"))
    return context


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A full TLS handshake between two in-memory endpoints; (client, server) ends once
    both are done, or the first side's SSLError (a TLS 1.3 server refuses a client
    certificate only after the client thinks it is done, so both must finish)."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client_end = client.wrap_bio(c_in, c_out, server_hostname=HOST)
    server_end = server.wrap_bio(s_in, s_out, server_side=True)
    done: dict[str, bool] = {"client": False, "server": False}
    for _ in range(10):
        for name, end in (("client", client_end), ("server", server_end)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return client_end, server_end
    raise AssertionError(f"the handshake did not finish: {done}")


def served_serial(tls: ReloadingTLS, ca: CertificateAuthority) -> int:
    client_end, _ = handshake(tls.context, _client_context(ca))
    der = client_end.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@dataclass
class Files:
    """A server's certificate and key on disk, as a Secret mount has them."""

    cert: Path
    key: Path

    def write(self, pair: KeyPair) -> None:
        """Write both files over the old ones (each test that cares about the order in
        between writes them one by one)."""
        self.key.write_bytes(pair.key_pem)
        self.cert.write_bytes(pair.cert_pem)


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority()


@pytest.fixture
def files(tmp_path: Path, ca: CertificateAuthority) -> Files:
    cert, key = _server_pair(ca).write(tmp_path, "tls")
    return Files(cert, key)


# ---- TLSFiles.check ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "refusal"),
    [
        (TLSFiles(cert_file=Path("c")), "--tls-cert-file and --tls-key-file go together"),
        (TLSFiles(key_file=Path("k")), "--tls-cert-file and --tls-key-file go together"),
        (
            TLSFiles(Path("c"), Path("k"), client_auth=ClientAuth.REQUIRE),
            "--client-auth require needs --client-ca-file",
        ),
        (
            TLSFiles(Path("c"), Path("k"), client_auth=ClientAuth.OPTIONAL),
            "--client-auth optional needs --client-ca-file",
        ),
        (
            TLSFiles(client_ca_file=Path("ca"), client_auth=ClientAuth.REQUIRE),
            "--client-ca-file needs --tls-cert-file",
        ),
        (
            TLSFiles(Path("c"), Path("k"), Path("ca")),
            "--client-ca-file is unused with --client-auth none",
        ),
    ],
    ids=["cert-no-key", "key-no-cert", "require-no-ca", "optional-no-ca", "ca-no-tls", "ca-unused"],
)
def test_check_refuses_settings_that_would_serve_less_than_asked(
    settings: TLSFiles, refusal: str
) -> None:
    with pytest.raises(TLSConfigError, match=refusal):
        settings.check()


@pytest.mark.parametrize(
    "settings",
    [
        TLSFiles(),
        TLSFiles(Path("c"), Path("k")),
        TLSFiles(Path("c"), Path("k"), Path("ca"), ClientAuth.OPTIONAL),
        TLSFiles(Path("c"), Path("k"), Path("ca"), ClientAuth.REQUIRE),
    ],
    ids=["plaintext", "tls", "optional", "require"],
)
def test_check_accepts_complete_settings(settings: TLSFiles) -> None:
    settings.check()
    assert settings.enabled is (settings.cert_file is not None)


def test_reloading_tls_needs_a_certificate_and_readable_files(files: Files) -> None:
    with pytest.raises(TLSConfigError, match="needs a certificate"):
        ReloadingTLS(TLSFiles())
    with pytest.raises(TLSConfigError, match="cannot load the TLS files"):
        ReloadingTLS(TLSFiles(files.cert, files.key.with_name("missing.key")))
    other = CertificateAuthority()
    files.key.write_bytes(_server_pair(other).key_pem)  # a key that is not the cert's
    with pytest.raises(TLSConfigError, match="cannot load the TLS files"):
        ReloadingTLS(TLSFiles(files.cert, files.key))


# ---- the context ---------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_minimum_version_is_tls_1_2(files: Files, ca: CertificateAuthority) -> None:
    tls = ReloadingTLS(TLSFiles(files.cert, files.key))
    assert tls.context.minimum_version is ssl.TLSVersion.TLSv1_2
    client_end, _ = handshake(tls.context, _client_context(ca))
    assert client_end.version() in {"TLSv1.2", "TLSv1.3"}
    # A client that offers nothing newer than TLS 1.1 is refused ...
    old = _client_context(ca)
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError, match="UNSUPPORTED_PROTOCOL"):
        handshake(tls.context, old)
    # ... by the server's floor: the same client gets TLS 1.1 from a server that allows it.
    lax = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    lax.set_ciphers("DEFAULT:@SECLEVEL=0")
    lax.minimum_version = ssl.TLSVersion.TLSv1
    lax.load_cert_chain(files.cert, files.key)
    client_end, _ = handshake(lax, old)
    assert client_end.version() == "TLSv1.1"


def _has_ticket(server: ssl.SSLContext, ca: CertificateAuthority) -> bool:
    """Whether a TLS 1.3 client got a session ticket (sent after the handshake)."""
    client_end, _ = handshake(server, _client_context(ca))
    assert client_end.version() == "TLSv1.3"
    with pytest.raises(ssl.SSLWantReadError):
        client_end.read()  # takes in what the server sent after its Finished
    session = client_end.session
    return session is not None and session.has_ticket


def test_no_session_tickets_are_issued(files: Files, ca: CertificateAuthority) -> None:
    tls = ReloadingTLS(TLSFiles(files.cert, files.key))
    assert not _has_ticket(tls.context, ca)
    ticketing = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ticketing.load_cert_chain(files.cert, files.key)
    assert _has_ticket(ticketing, ca)  # what OpenSSL does by default


def test_a_ca_bundle_is_read_and_checked(tmp_path: Path, ca: CertificateAuthority) -> None:
    other = CertificateAuthority("other CA")
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(ca.cert_pem + other.cert_pem)
    assert read_ca_bundle(bundle) == bundle.read_text()
    (tmp_path / "junk.crt").write_text("not a certificate\n")
    for path in (tmp_path / "junk.crt", tmp_path / "missing.crt"):
        with pytest.raises(TLSConfigError, match="not a readable PEM certificate bundle"):
            read_ca_bundle(path)


@pytest.mark.parametrize(
    ("auth", "mode"),
    [
        (ClientAuth.NONE, ssl.CERT_NONE),
        (ClientAuth.OPTIONAL, ssl.CERT_OPTIONAL),
        (ClientAuth.REQUIRE, ssl.CERT_REQUIRED),
    ],
)
def test_client_auth_is_the_contexts_verify_mode(
    tmp_path: Path, files: Files, ca: CertificateAuthority, auth: ClientAuth, mode: ssl.VerifyMode
) -> None:
    ca_file = tmp_path / "clients.crt"
    ca_file.write_bytes(ca.cert_pem)
    tls = ReloadingTLS(
        TLSFiles(files.cert, files.key, None if auth is ClientAuth.NONE else ca_file, auth)
    )
    assert tls.context.verify_mode == mode


def test_client_certificates_against_require_and_optional(
    tmp_path: Path, files: Files, ca: CertificateAuthority
) -> None:
    clients = CertificateAuthority("client CA")
    ca_file = tmp_path / "clients.crt"
    ca_file.write_bytes(clients.cert_pem)
    agent = clients.issue("agent-1", organizations=("fleet-a",), client=True)
    stranger = CertificateAuthority("someone else").issue("agent-2", client=True)
    require = ReloadingTLS(TLSFiles(files.cert, files.key, ca_file, ClientAuth.REQUIRE))
    optional = ReloadingTLS(TLSFiles(files.cert, files.key, ca_file, ClientAuth.OPTIONAL))

    _, server_end = handshake(require.context, _client_context(ca, agent, tmp_path))
    assert client_certificate(server_end.getpeercert()) == ClientCertificate(
        "agent-1", ("fleet-a",)
    )
    with pytest.raises(ssl.SSLError, match="PEER_DID_NOT_RETURN_A_CERTIFICATE"):
        handshake(require.context, _client_context(ca))

    _, server_end = handshake(optional.context, _client_context(ca))
    assert client_certificate(server_end.getpeercert()) is None
    for context in (require.context, optional.context):
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
            handshake(context, _client_context(ca, stranger, tmp_path))


def test_an_expired_client_certificate_is_refused(
    tmp_path: Path, files: Files, ca: CertificateAuthority
) -> None:
    ca_file = tmp_path / "clients.crt"
    ca_file.write_bytes(ca.cert_pem)
    now = dt.datetime.now(dt.UTC)
    expired = ca.issue(
        "agent",
        client=True,
        not_valid_before=now - dt.timedelta(hours=2),
        not_valid_after=now - dt.timedelta(hours=1),
    )
    tls = ReloadingTLS(TLSFiles(files.cert, files.key, ca_file, ClientAuth.REQUIRE))
    with pytest.raises(ssl.SSLError, match="certificate has expired"):
        handshake(tls.context, _client_context(ca, expired, tmp_path))


# ---- reloading -----------------------------------------------------------------------


def test_changed_files_are_reloaded_into_the_same_context(
    files: Files, ca: CertificateAuthority
) -> None:
    tls = ReloadingTLS(TLSFiles(files.cert, files.key))
    context = tls.context
    first = served_serial(tls, ca)
    assert first == x509.load_pem_x509_certificate(files.cert.read_bytes()).serial_number
    rotated = _server_pair(ca)
    files.write(rotated)
    assert tls.reload() is True
    assert tls.reloads == 1
    assert tls.context is context  # the listener holds this object: it must not be replaced
    assert served_serial(tls, ca) == rotated.certificate.serial_number


def test_same_content_is_not_reloaded(files: Files, ca: CertificateAuthority) -> None:
    """Touching or rewriting the files with the same bytes (a Secret re-synced) is not a
    rotation."""
    tls = ReloadingTLS(TLSFiles(files.cert, files.key))
    serial = served_serial(tls, ca)
    files.cert.write_bytes(files.cert.read_bytes())
    files.key.write_bytes(files.key.read_bytes())
    assert tls.reload() is False
    assert tls.reloads == 0
    assert served_serial(tls, ca) == serial


def test_a_new_client_ca_is_trusted_after_reload(
    tmp_path: Path, files: Files, ca: CertificateAuthority
) -> None:
    old, new = CertificateAuthority("old client CA"), CertificateAuthority("new client CA")
    ca_file = tmp_path / "clients.crt"
    ca_file.write_bytes(old.cert_pem)
    tls = ReloadingTLS(TLSFiles(files.cert, files.key, ca_file, ClientAuth.REQUIRE))
    agent = new.issue("agent", client=True)
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        handshake(tls.context, _client_context(ca, agent, tmp_path))
    ca_file.write_bytes(old.cert_pem + new.cert_pem)
    assert tls.reload() is True
    _, server_end = handshake(tls.context, _client_context(ca, agent, tmp_path))
    assert client_certificate(server_end.getpeercert()) == ClientCertificate("agent")


def test_a_mismatched_pair_is_refused_and_a_later_good_pair_loads(
    files: Files, ca: CertificateAuthority
) -> None:
    """The key written first: the new key with the old certificate does not load, the old
    pair keeps serving, and the next reload after the certificate arrives loads the new
    pair."""
    tls = ReloadingTLS(TLSFiles(files.cert, files.key))
    serial = served_serial(tls, ca)
    rotated = _server_pair(ca)
    files.key.write_bytes(rotated.key_pem)
    assert tls.reload() is False
    assert tls.reloads == 0
    assert served_serial(tls, ca) == serial
    files.cert.write_bytes(rotated.cert_pem)
    assert tls.reload() is True
    assert served_serial(tls, ca) == rotated.certificate.serial_number


def test_a_certificate_written_before_its_key_keeps_the_old_pair_serving(
    files: Files, ca: CertificateAuthority
) -> None:
    """The other order. OpenSSL installs a certificate before it checks the key against
    it: loaded straight into the live context, this pair would leave it with no usable
    key, and every handshake would fail (NO_SHARED_CIPHER) while reload() said False."""
    tls = ReloadingTLS(TLSFiles(files.cert, files.key))
    serial = served_serial(tls, ca)
    rotated = _server_pair(ca)
    files.cert.write_bytes(rotated.cert_pem)  # the key is still the old one
    assert tls.reload() is False
    assert served_serial(tls, ca) == serial
    files.key.write_bytes(rotated.key_pem)
    assert tls.reload() is True
    assert served_serial(tls, ca) == rotated.certificate.serial_number


def test_putting_the_old_files_back_after_a_bad_certificate_serves_again(
    files: Files, ca: CertificateAuthority
) -> None:
    """Had the bad certificate broken the live context, the restored files would match
    the last good load's fingerprint and never be loaded again: broken until restart."""
    tls = ReloadingTLS(TLSFiles(files.cert, files.key))
    original = files.cert.read_bytes()
    files.cert.write_bytes(_server_pair(ca).cert_pem)  # a wrong certificate, by mistake
    assert tls.reload() is False
    assert served_serial(tls, ca) == x509.load_pem_x509_certificate(original).serial_number
    files.cert.write_bytes(original)
    assert tls.reload() is False
    assert served_serial(tls, ca) == x509.load_pem_x509_certificate(original).serial_number


async def test_watch_reloads_on_its_interval(files: Files, ca: CertificateAuthority) -> None:
    tls = ReloadingTLS(TLSFiles(files.cert, files.key, reload_seconds=0.01))
    watcher = asyncio.create_task(tls.watch())
    try:
        rotated = _server_pair(ca)
        files.write(rotated)
        for _ in range(500):  # the watcher sleeps 10 ms between looks: 5 s at most
            if tls.reloads:
                break
            await asyncio.sleep(0.01)
        assert tls.reloads == 1
        assert served_serial(tls, ca) == rotated.certificate.serial_number
    finally:
        watcher.cancel()


# ---- client_certificate ---------------------------------------------------------------


def test_client_certificate_reads_getpeercert_dicts() -> None:
    peercert = {
        "subject": (
            (("organizationName", "fleet-a"),),
            (("organizationName", "fleet-b"),),
            (("commonName", "agent-1"),),
        ),
        "issuer": ((("commonName", "client CA"),),),
        "subjectAltName": (
            ("DNS", "agent-1.example"),
            ("URI", "spiffe://example/agent-1"),
            ("email", "ops@example.com"),
            ("IP Address", "10.0.0.1"),
            ("DNS", "agent-1.alt"),
        ),
    }
    cert = client_certificate(peercert)
    assert cert == ClientCertificate(
        "agent-1",
        ("fleet-a", "fleet-b"),
        ("agent-1.example", "agent-1.alt"),
        ("spiffe://example/agent-1",),
        ("ops@example.com",),
    )
    assert cert.names == (
        "agent-1",
        "agent-1.example",
        "agent-1.alt",
        "spiffe://example/agent-1",
        "ops@example.com",
    )


def test_no_verified_certificate_is_no_identity() -> None:
    """Python gives {} for an unverified peer certificate and None without a handshake."""
    assert client_certificate(None) is None
    assert client_certificate({}) is None
    assert client_certificate({"subject": ()}) == ClientCertificate("")
