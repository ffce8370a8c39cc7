"""Kubernetes Events, as the pure layers decided them."""

from __future__ import annotations

from collections.abc import Iterable

import kopf

from opamp_operator.fleet.events import EVENT_MESSAGE_LIMIT, Event


def emit(body: kopf.Body, events: Iterable[Event]) -> None:
    for event in events:
        kopf.event(
            body,
            type=event.type,
            reason=event.reason,
            message=event.message[:EVENT_MESSAGE_LIMIT],
        )
