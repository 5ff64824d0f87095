"""What nodes tell each other on LISTEN/NOTIFY (D-364, D-387): the payloads.

Each is an :func:`~m2mgw.core.postgres.notify.event`. To one node's channel:
``takeover`` (serial, node, epoch: :func:`~m2mgw.core.postgres.leases.claim_terminal`)
and ``request`` (serial, id: a request for a terminal whose session it holds). To
every node: ``terminals`` (serials, node, live: records changed, and which of them
the sender holds the session of), ``application`` (app, node) and ``outbox`` (app:
:func:`~m2mgw.core.postgres.outbox.wake_outbox`). Serials are listed comma-separated;
a list too long for one payload is sent in several.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

from m2mgw.core.postgres.notify import event

TAKEOVER = "takeover"
REQUEST = "request"
TERMINALS = "terminals"
APPLICATION = "application"
OUTBOX = "outbox"
#: Serials per ``terminals`` payload: 17 bytes each, well below NOTIFY's 8000.
SERIALS_PER_EVENT = 200


def terminals_changed(node: str, serials: Collection[str], live: Collection[str]) -> Iterator[str]:
    """``terminals`` payloads for ``serials``; ``live`` those whose sessions ``node``
    holds."""
    ordered = sorted(serials)
    for start in range(0, len(ordered), SERIALS_PER_EVENT):
        chunk = ordered[start:start + SERIALS_PER_EVENT]
        yield event(TERMINALS, node=node, serials=",".join(chunk),
                    live=",".join(s for s in chunk if s in live))


def serials_of(text: str) -> list[str]:
    return [serial for serial in text.split(",") if serial]
