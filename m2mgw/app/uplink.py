"""What terminals tell applications: the engine's :class:`~m2mgw.core.uplink.UplinkSink`.

Uplink data becomes DeliverData (3.3.1), a trap NotifyAlarm or NotifyConfigTrap
(3.3.3, 3.3.4), a state change NotifyTerminalState (3.3.5), each stored in the
:class:`~m2mgw.app.outbox.Outbox` of every application that sees the terminal. Every
uplink is also handed to the stored sink first (the registry's message log), which
keeps the data of EC codes no application is provisioned for.
"""

from __future__ import annotations

from collections import Counter

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from m2mgw.app import operations as ops
from m2mgw.app import policy
from m2mgw.app.outbox import Outbox
from m2mgw.core.model import Application, Terminal, TerminalState
from m2mgw.core.registry import Registry
from m2mgw.core.uplink import UplinkSink
from m2mgw.protocol import messages as m
from m2mgw.protocol import tags
from m2mgw.protocol.constants import TransparentResult

log = Logger()


class AppUplink:
    """Terminal data, reports and state changes as notifications (an ``UplinkSink``)."""

    def __init__(self, registry: Registry, outbox: Outbox, stored: UplinkSink,
                 clock: IReactorTime) -> None:
        self.registry = registry
        self.outbox = outbox
        #: Logs every uplink; keeps data for EC codes no application is provisioned for.
        self.stored = stored
        self.clock = clock
        #: Trap TLVs left out of notifications, by terminal serial (D-251).
        self.tags_left_out: Counter[str] = Counter()

    def exists(self, app_id: str) -> bool:
        return self.registry.application_by_ec(app_id) is not None or self.stored.exists(app_id)

    def deliver(
        self, app_id: str, serial: str, message: m.TransparentData | m.TransparentCmd, *,
        sequence_id: int, bearer: str,
    ) -> int | Deferred[int]:
        """DeliverData (3.3.1, AD-16): durable first; result 0 when a channel exists."""
        kept = self.stored.deliver(app_id, serial, message, sequence_id=sequence_id,
                                   bearer=bearer)
        app = self.registry.application_by_ec(app_id)
        if app is None:
            return kept
        if not app.enabled:
            return TransparentResult.REJECTED
        terminal = self.registry.get(serial)
        payload = ops.DeliverData(
            notify_id=0, terminal_id=serial, data=message.user_data,
            fixed_part=message.fixed_part if isinstance(message, m.TransparentCmd) else None,
            bearer=policy.bearer_name(terminal.bearer if terminal else None),
            receive_time=int(self.clock.seconds()),
        )
        result = (TransparentResult.ACCEPTED if self.outbox.reachable(app)
                  else TransparentResult.QUEUED)
        # Not stored as a notification (D-253): the message log still holds it.
        return self.outbox.notify(app, payload).addCallback(
            lambda entry: result if entry is not None else kept)

    def notify_trap(self, terminal: Terminal, values: dict[int, bytes], bearer: str) -> None:
        """NotifyAlarm for an alarm report, NotifyConfigTrap for any other non-empty trap.

        Its items are the TLVs both bindings can carry (D-251); the restore code is
        escaped like every terminal string (D-252).
        """
        if not values:
            return
        now = int(self.clock.seconds())
        serial = terminal.serial or ""
        if tags.ALARM_STATUS in values:
            def num(tag: int) -> int:
                raw = values.get(tag, b"")
                return int.from_bytes(raw, "big") if len(raw) in (1, 2, 4) else 0

            restore = values.get(tags.ALARM_RESTORE)
            items, left_out = policy.carried_items(
                ops.NotifyAlarm,
                ((t, v) for t, v in values.items() if t not in tags.ALARM_TAGS))
            payload: object = ops.NotifyAlarm(
                notify_id=0, terminal_id=serial,
                alarm=ops.AlarmInfo(status=num(tags.ALARM_STATUS) & 0xFF,
                                    type=num(tags.ALARM_TYPE) & 0xFF,
                                    code=num(tags.ALARM_CODE) & 0xFFFF, time=now,
                                    restore_code=None if restore is None
                                    else ops.terminal_text(restore.decode("latin-1"))),
                items=items, bearer=policy.bearer_name(bearer),  # the alarm's own (D-333)
            )
        else:
            items, left_out = policy.carried_items(ops.NotifyConfigTrap, values.items())
            payload = ops.NotifyConfigTrap(notify_id=0, terminal_id=serial, time=now,
                                           items=items)
        if left_out:
            self.tags_left_out[serial] += len(left_out)
            log.info("CONFIG_TRAP of {serial}: {tags} left out of its notification, the "
                     "application interface uses them itself", serial=serial,
                     tags=" ".join(f"0x{tag:04X}" for tag in left_out))
        for app in self._apps_of(terminal):
            self.outbox.notify(app, payload)

    def terminal_changed(self, terminal: Terminal, old: str, new: str,
                         reason: int | None) -> None:
        """An engine state observer: NotifyTerminalState (3.3.5) to every application
        that sees the terminal."""
        event = policy.EVENTS.get(TerminalState(new))
        if event is None:
            return
        if new not in (TerminalState.LOGGED_OUT, TerminalState.OFFLINE):
            reason = None  # the reason belongs to LOGGED_OUT and OFFLINE only
        payload = ops.NotifyTerminalState(notify_id=0, terminal_id=terminal.serial or "",
                                          event=event, reason=reason,
                                          time=int(self.clock.seconds()))
        for app in self._apps_of(terminal):
            self.outbox.notify(app, payload)

    def _apps_of(self, terminal: Terminal) -> list[Application]:
        """The enabled applications that see the registry's record of ``terminal``."""
        stored = self.registry.get(terminal.serial or "")
        if stored is None:
            return []
        return [app for app in self.registry.applications()
                if app.enabled and policy.visible(app, stored)]
