"""Where terminal data for applications goes (spec 4.7, 4.9, PD-27).

The application side (SOAP, long connections, callbacks) implements
:class:`UplinkSink`; until an application is connected, :class:`StoredUplink`
keeps every uplink message in the registry's message log so nothing is lost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from twisted.internet.defer import Deferred

from m2mgw.core.model import LogEntry, Terminal
from m2mgw.core.registry import Registry
from m2mgw.protocol.constants import Command, TransparentResult

if TYPE_CHECKING:
    from m2mgw.protocol.messages import TransparentCmd, TransparentData


class UplinkSink(Protocol):
    """The application side as the terminal engine sees it."""

    def exists(self, app_id: str) -> bool:
        """Whether an application with this EC code is known."""
        ...

    def deliver(
        self, app_id: str, serial: str, message: TransparentData | TransparentCmd, *,
        sequence_id: int, bearer: str,
    ) -> int | Deferred[int]:
        """Hand uplink data to an application: 0 delivered/connected, 1 queued (5.4).

        ``sequence_id`` and ``bearer`` are the message's: its message-log row is the
        exchange's only one (D-391)."""
        ...

    def notify_trap(self, terminal: Terminal, values: dict[int, bytes], bearer: str) -> None:
        """A configuration, alarm or statistics report, for the terminal's applications;
        ``bearer`` is the kind (``tcp``, ``udp``, ``sms``) the report arrived on."""
        ...


class StoredUplink:
    """Applications are the EC codes terminals are bound to; data waits in the log.

    Each delivery is a durable ``uplink`` log entry, so the answer is result 1
    ("queued") only after the registry committed it; the entry is the exchange's row
    in the message log (D-391).
    """

    def __init__(self, registry: Registry, clock_seconds: Callable[[], float]) -> None:
        self.registry = registry
        self._seconds = clock_seconds
        #: Per EC code, the terminal last seen bound to it: checked in O(1) per message.
        self._witness: dict[str, Terminal] = {}

    def exists(self, app_id: str) -> bool:
        """Whether some registered terminal is bound to ``app_id``.

        Runs on every TRANSPARENT_DATA: the remembered witness terminal answers when it
        is still registered and still bound, so only a miss scans all terminals.
        """
        witness = self._witness.get(app_id)
        if witness is not None and _bound(witness, app_id):
            if self.registry.by_imei(witness.imei) is witness:
                return True
        for terminal in self.registry.terminals():
            if _bound(terminal, app_id):
                self._witness[app_id] = terminal
                return True
        self._witness.pop(app_id, None)
        return False

    def deliver(
        self, app_id: str, serial: str, message: TransparentData | TransparentCmd, *,
        sequence_id: int, bearer: str,
    ) -> int | Deferred[int]:
        committed = self.registry.log_committed(
            LogEntry(
                time=self._seconds(),
                serial=serial,
                direction="in",
                bearer=bearer,
                command_id=message.COMMAND,
                sequence_id=sequence_id,
                event=_UPLINK_EVENTS[message.COMMAND],
                detail=f"to={app_id} data={message.user_data.hex()}",
            )
        )
        return committed.addCallback(lambda _: TransparentResult.QUEUED)

    def notify_trap(self, terminal: Terminal, values: dict[int, bytes], bearer: str) -> None:
        del terminal, values, bearer


_UPLINK_EVENTS: dict[int, str] = {
    Command.TRANSPARENT_DATA: "uplink-data",
    Command.TRANSPARENT_CMD: "uplink-command",
}


def _bound(terminal: Terminal, app_id: str) -> bool:
    return app_id in terminal.apps or app_id == terminal.default_app
