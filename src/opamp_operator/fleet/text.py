"""How agent-supplied text is shortened before it reaches a status, an Event or a log."""

from __future__ import annotations

MESSAGE_LIMIT = 200
CONDITION_MESSAGE_LIMIT = 1024
HASH_SHOWN = 12  # hex digits of a config hash shown in messages


def truncate(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """One line of at most `limit` characters, so one chatty agent cannot bloat status."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def short_hash(config_hash: str) -> str:
    return config_hash[:HASH_SHOWN] if config_hash else "(none)"
