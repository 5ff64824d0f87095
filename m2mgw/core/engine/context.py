"""What every phase of the engine shares: its collaborators, and answering.

The phases (admission, reports, credentials) are separate objects over one
:class:`Context`, so that each reads as the part of the spec it applies while the
answer path (sign, encrypt, cache, count, log) is written once.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from m2mgw.config import ProtocolConfig
from m2mgw.core.engine.events import EngineEvents, PlatformRequests
from m2mgw.core.engine.exchange import Exchange, error_answer, summary
from m2mgw.core.engine.frames import FrameBuilder
from m2mgw.core.files import FileBlocks
from m2mgw.core.model import LogEntry, Terminal, TerminalState
from m2mgw.core.refusals import Reason, Refusals
from m2mgw.core.registry import Registry
from m2mgw.core.session import Bearer, Session
from m2mgw.core.sessions import SessionTable
from m2mgw.core.stats import EngineStats
from m2mgw.core.uplink import UplinkSink
from m2mgw.protocol import messages as m
from m2mgw.protocol.dupcache import ResponseCache
from m2mgw.protocol.errors import BodyError
from m2mgw.protocol.fragment import FragmentPart

log = Logger()

#: Seconds after session-key expiry before the platform logs the terminal out (6.4.2).
KEY_GRACE = 300

StateObserver = Callable[[Terminal, str, str, "int | None"], None]


class Context:
    """The engine's collaborators and the answer path of every phase."""

    def __init__(
        self,
        *,
        registry: Registry,
        config: ProtocolConfig,
        clock: IReactorTime,
        sessions: SessionTable,
        frames: FrameBuilder,
        events: EngineEvents,
        requests: PlatformRequests,
        uplink: UplinkSink,
        files: FileBlocks,
        refusals: Refusals,
        stats: EngineStats,
    ) -> None:
        self.registry = registry
        self.config = config
        self.clock = clock
        self.sessions = sessions
        self.frames = frames
        self.events = events
        self.requests = requests
        self.uplink = uplink
        self.files = files
        self.refusals = refusals
        self.stats = stats
        self.cache = ResponseCache(config.response_cache_window, config.response_cache_entries)
        #: Observers of state changes: called with (terminal, old_state, new_state,
        #: logout reason or None).
        self.state_observers: list[StateObserver] = []

    # ------------------------------------------------------------------ answering

    def answer(
        self,
        ex: Exchange,
        message: m.Message,
        *,
        flag: int | None = None,
        encrypt: bool = True,
        row: bool = True,
    ) -> bytes | None:
        """Send the answer on the request's bearer, signed and encrypted per 6.1-6.4, and
        as the terminal's profile reads it (C6, C7); the frame sent, if any.

        The exchange is written to the message log unless ``row`` is False, the uplink
        sink wrote its row (D-391) or the request was refused without being
        authenticated (D-303)."""
        frame = self.frames.answer(ex, message, flag, encrypt)
        if frame is None:
            self._oversized_answer(ex, message)
            return None
        header = ex.header
        ex.bearer.send(frame)
        stats = self.stats
        stats.answer_latency[header.command_id].observe(self.clock.seconds() - ex.now)
        if isinstance(message, m.LoginAck):
            stats.logins[message.result] += 1
        if ex.cache_key is not None:
            self.cache.store(ex.cache_key, ex.frame.raw, [frame], ex.now)
        if not row or ex.logged or (ex.refused and not (ex.authenticated or ex.sms)):
            return frame
        if ex.request is not None:
            event, direction, command = "request", "in", header.command_id
            detail = f"{summary(ex.request)} => {summary(message)}"
        else:
            event, direction, command = "answer", "out", message.COMMAND
            detail = summary(message)
        self.log(
            ex.terminal,
            header.serial,
            direction,
            ex.bearer,
            command,
            header.sequence_id,
            event,
            detail,
        )
        return frame

    def _oversized_answer(self, ex: Exchange, message: m.Message) -> None:
        """C7: an answer the terminal could not read goes out as the command's generic
        error answer, or not at all; either way the operator is told (issue #10)."""
        limit = self.frames.profile_of(ex.terminal).max_frame
        self.refuse(
            ex,
            Reason.PROFILE,
            f"{message.name} would exceed the {limit}-byte frames this terminal reads (C7)",
        )
        error = error_answer(ex.header.command_id)  # a few bytes: always fits
        if error is not None:
            self.answer(ex, error)

    def send_reply(self, ex: Exchange, frame: bytes, *, cache: bool = True) -> None:
        """Send a frame built for ``ex`` outside :meth:`answer` (a part exchange)."""
        ex.bearer.send(frame)
        if cache and ex.cache_key is not None:
            self.cache.store(ex.cache_key, ex.frame.raw, [frame], ex.now)

    def reassembly_reply(self, ex: Exchange, reply: FragmentPart, *, cache: bool = True) -> None:
        self.send_reply(ex, self.frames.reassembly_reply(ex, reply), cache=cache)

    def unparseable(self, ex: Exchange, command: int, exc: BodyError) -> None:
        """Spec 4.2 rule 4: the generic error answer, or a discard."""
        self.refuse(ex, Reason.MALFORMED, exc.reason)
        error = error_answer(command)
        if error is not None:
            self.answer(ex, error)

    def refuse(
        self,
        ex: Exchange,
        reason: Reason,
        detail: str,
        *,
        hint: str | None = None,
        **fields: object,
    ) -> None:
        """Report what this exchange is refused for, with its terminal keys; ``hint``
        names the compatibility profile that would accept it (issue #10)."""
        ex.refused = True
        self.refusals.report(reason, detail, hint=hint, **ex.log_keys, **fields)

    def auth_failure(
        self,
        ex: Exchange,
        terminal: Terminal,
        detail: str,
        *,
        reason: Reason = Reason.AUTH_FAILED,
        hint: str | None = None,
    ) -> None:
        """A message that failed authentication: counted on the record (6.2) and refused,
        with no message-log row (D-303)."""
        terminal.auth_failures += 1
        self.refuse(ex, reason, detail, hint=hint, failures=terminal.auth_failures)

    def log(
        self,
        terminal: Terminal | None,
        serial: str,
        direction: str,
        bearer: Bearer,
        command_id: int,
        sequence_id: int,
        event: str,
        detail: str,
    ) -> None:
        self.registry.log(
            LogEntry(
                time=self.clock.seconds(),
                serial=terminal.serial if terminal else serial,
                direction=direction,
                bearer=bearer.kind,
                command_id=command_id,
                sequence_id=sequence_id,
                event=event,
                detail=detail,
            )
        )

    # ------------------------------------------------------------------ sessions

    def set_state(self, terminal: Terminal, state: str, reason: int | None = None) -> None:
        """Change state and tell the observers; ``reason`` is the logout reason (5.3)."""
        old = terminal.state
        if old == state:
            return
        terminal.state = TerminalState(state)
        for observer in self.state_observers:
            observer(terminal, old, state, reason)

    def interval(self, terminal: Terminal) -> float:
        return float(terminal.heartbeat_interval or self.config.heartbeat_interval_default)

    def watch(self, session: Session, terminal: Terminal) -> None:
        """Put the session's next deadline on the table's heap (offline 9.4, release 4.5,
        key expiry 6.4.2, sync wait PD-29); a later one is found when it comes up."""
        self.sessions.check_at(session.serial, self.session_deadline(session, terminal))

    def session_deadline(self, session: Session, terminal: Terminal) -> float:
        """When the tick must next look at the session; it acts strictly after the
        offline and key-expiry times, and at or after the others."""
        if session.release_at is not None:
            return session.release_at
        due = session.last_valid + self.config.offline_after_intervals * session.interval
        expiry = terminal.session_key_expiry
        if session.cipher is not None and expiry is not None:
            due = min(due, expiry + KEY_GRACE)
        if session.sync_deadline is not None:
            due = min(due, session.sync_deadline)
        return due
