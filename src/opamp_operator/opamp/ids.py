"""Instance UIDs: 16 bytes, UUIDv7 when the server makes one (the spec's SHOULD)."""

from __future__ import annotations

import os
import time
import uuid

UID_LENGTH = 16


def uuid7(now_ns: int | None = None) -> bytes:
    """A UUIDv7: 48-bit Unix milliseconds, version 7, variant 10, 74 random bits.

    Python 3.11's uuid module has no uuid7; time order keeps newly assigned uids sortable.
    """
    ms = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
    raw = bytearray(ms.to_bytes(6, "big") + os.urandom(10))
    raw[6] = 0x70 | (raw[6] & 0x0F)
    raw[8] = 0x80 | (raw[8] & 0x3F)
    return bytes(raw)


def valid_uid(uid: bytes) -> bool:
    return len(uid) == UID_LENGTH and uid != bytes(UID_LENGTH)


def uid_str(uid: bytes) -> str:
    """Canonical UUID text, as the OpAMP-Instance-UID header and our API spell it."""
    return str(uuid.UUID(bytes=uid)) if len(uid) == UID_LENGTH else uid.hex()
