"""Agent packages: what the server offers (OpAMP PackagesAvailable) and what an agent
reports of them (PackageStatuses).

The spec has the server compute every hash ("Calculating Hashes"); agents only store and
compare them. A package's hash covers every field of its offer and the file's content
hash, so a new URL, version or signature is a new package; the aggregate covers every
package offered by name. The file's content hash is the SHA-256 the user gives for the
file: agents verify the download against it before installing (DownloadableFile).

The server never offers an empty set of packages: to an agent that would mean "delete
what you have" (spec, Step 2), and a fleet that stops naming a package should leave its
agents running what they run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum

from opamp_operator.opamp.proto import opamp_pb2 as pb


def _framed(*items: bytes) -> bytes:
    """Length-prefixed, so no two different tuples hash alike by concatenation."""
    return b"".join(len(item).to_bytes(8, "big") + item for item in items)


@dataclass(frozen=True)
class PackageOffer:
    """One top-level package offered to an agent."""

    name: str
    version: str
    url: str
    content_hash: bytes
    signature: bytes = b""
    package_hash: bytes = field(init=False)
    all_packages_hash: bytes = field(init=False)

    def __post_init__(self) -> None:
        if len(self.content_hash) != hashlib.sha256().digest_size:
            raise ValueError("a package's content hash is a SHA-256 (32 bytes)")
        package = hashlib.sha256(
            _framed(
                b"top-level",
                self.name.encode(),
                self.version.encode(),
                self.url.encode(),
                self.content_hash,
                self.signature,
            )
        ).digest()
        object.__setattr__(self, "package_hash", package)
        everything = hashlib.sha256(_framed(self.name.encode(), package)).digest()
        object.__setattr__(self, "all_packages_hash", everything)

    def to_proto(self) -> pb.PackagesAvailable:
        offer = pb.PackagesAvailable(all_packages_hash=self.all_packages_hash)
        package = offer.packages[self.name]
        package.type = pb.PackageType_TopLevel
        package.version = self.version
        package.hash = self.package_hash
        package.file.download_url = self.url
        package.file.content_hash = self.content_hash
        package.file.signature = self.signature
        return offer


class PackageState(StrEnum):
    """PackageStatusEnum, as the read API and status say it."""

    INSTALLED = "Installed"
    INSTALL_PENDING = "InstallPending"
    INSTALLING = "Installing"
    INSTALL_FAILED = "InstallFailed"
    DOWNLOADING = "Downloading"


_STATES = {
    pb.PackageStatusEnum_Installed: PackageState.INSTALLED,
    pb.PackageStatusEnum_InstallPending: PackageState.INSTALL_PENDING,
    pb.PackageStatusEnum_Installing: PackageState.INSTALLING,
    pb.PackageStatusEnum_InstallFailed: PackageState.INSTALL_FAILED,
    pb.PackageStatusEnum_Downloading: PackageState.DOWNLOADING,
}
IN_PROGRESS = frozenset(
    {PackageState.INSTALL_PENDING, PackageState.INSTALLING, PackageState.DOWNLOADING}
)
ERROR_CHARS = 1024
"""Of an agent's package error message, kept for status and the read API."""


@dataclass(frozen=True)
class PackageReport:
    """What an agent says of one package: where its install is, the version it has, the
    package hash it was offered, and why an install failed."""

    name: str
    state: PackageState | None
    has_version: str
    offered_hash: str  # hex
    error: str


def package_report(statuses: pb.PackageStatuses | None, name: str) -> PackageReport | None:
    """The agent's report on package `name`, or None when it reports none for it."""
    if statuses is None or name not in statuses.packages:
        return None
    status = statuses.packages[name]
    return PackageReport(
        name=name,
        state=_STATES.get(status.status),
        has_version=status.agent_has_version,
        offered_hash=status.server_offered_hash.hex(),
        error=status.error_message[:ERROR_CHARS],
    )
