"""Credential sets: which one a registration delivers, and their upkeep (spec 4.3, 6.3)."""

from __future__ import annotations

from twisted.logger import Logger

from m2mgw.core.engine.context import Context
from m2mgw.core.engine.events import CredentialsDue
from m2mgw.core.model import CredentialSet, Terminal
from m2mgw.core.session import Session
from m2mgw.core.sessions import Runtime
from m2mgw.protocol.security import NEVER, generate_base_key, generate_password

log = Logger()


class Credentials:
    """Chooses, generates, delivers, re-delivers and renews credential sets."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def to_deliver(self, terminal: Terminal, *, fresh: bool, now: float) -> CredentialSet:
        """The pending set; else an unexpired current set; else a new pending set (4.3)."""
        if terminal.pending is not None:
            return terminal.pending
        if not fresh and terminal.current is not None and not _expired(terminal.current, now):
            return terminal.current
        terminal.pending = self.new(terminal.cipher, now)
        return terminal.pending

    def new(self, cipher: str, now: float) -> CredentialSet:
        """A freshly generated set (6.3.2, PD-39)."""
        ttl = self.ctx.config.credential_ttl
        expiry = NEVER if ttl is None else min(NEVER - 1, int(now + ttl))
        return CredentialSet(
            uplink_password=generate_password(),
            uplink_expiry=expiry,
            downlink_password=generate_password(),
            downlink_expiry=expiry,
            base_key=generate_base_key("aes" if cipher == "aes" else "legacy"),
            base_key_expiry=expiry,
        )

    def deliver(self, terminal: Terminal, creds: CredentialSet) -> None:
        """Queue SECURITY_CONFIG op 0 with ``creds`` (the router builds it, 6.3.4)."""
        self.ctx.events.publish(CredentialsDue(terminal, creds))

    def send(self, terminal: Terminal, creds: CredentialSet, now: float) -> None:
        """Persist, queue SECURITY_CONFIG op 0 and start the re-delivery clock (6.3.5)."""
        ctx = self.ctx
        serial = terminal.serial or ""
        ctx.registry.save(terminal)
        self.deliver(terminal, creds)
        ctx.sessions.record(serial).credentials_sent = (creds, now)
        ctx.sessions.credentials_at(serial, now + ctx.config.credential_redeliver_interval)

    # ------------------------------------------------------------------ upkeep

    def upkeep(self, now: float) -> None:
        """Renewal and re-delivery (6.3.5) for the logged-in terminals that are due."""
        sessions = self.ctx.sessions
        for record in sessions.due_credentials(now):
            serial = record.serial
            session = record.session
            terminal = self.ctx.registry.get(serial)
            if session is None or session.release_at is not None or terminal is None:
                # Not logged in: the next LOGIN schedules a check again.
                record.credentials_sent = None
                sessions.prune(serial)
                continue
            sessions.credentials_at(serial, self.check(terminal, session, record, now))

    def check(self, terminal: Terminal, session: Session, record: Runtime, now: float) -> float:
        """Re-deliver an uncommitted pending set, or renew a current set within
        ``credential_renew_margin`` of its expiry; returns when to look again.

        A renewal replaces all three secrets, so that the first LOGIN under the new set
        verifies only under it and commits it (6.3.5).
        """
        serial = session.serial
        interval = self.ctx.config.credential_redeliver_interval
        pending = terminal.pending
        if pending is not None:
            sent = record.credentials_sent
            queued_at = sent[1] if sent is not None and sent[0] is pending else None
            times = [t for t in (pending.delivered_at, queued_at) if t is not None]
            if not times:
                # Never queued in this run (e.g. before a restart): the clock starts now.
                record.credentials_sent = (pending, now)
                return now + interval
            if now < max(times) + interval:
                return max(times) + interval
            action = "re-delivered"
        else:
            record.credentials_sent = None
            if terminal.current is None:
                return now + interval
            renew_at = _earliest_expiry(terminal.current) - self.ctx.config.credential_renew_margin
            if now < renew_at:
                return min(renew_at, now + interval)
            action = "renewed"
        if not self._path(terminal, session):
            log.info(
                "Credentials of {serial} are due to be {action}, but there is neither a "
                "session key nor SMS to carry them (PD-21)",
                serial=serial,
                action=action,
            )
            return now + interval
        if pending is None:
            pending = terminal.pending = self.new(terminal.cipher, now)
        log.info("Credentials of {serial} {action}", serial=serial, action=action)
        self.send(terminal, pending, now)
        return now + interval

    def _path(self, terminal: Terminal, session: Session) -> bool:
        """Whether an op 0 can travel now: encrypted in this session, or by SMS (PD-21).

        Without either the delivery would wait at the head of the terminal's queue and
        hold up every other platform request, so the upkeep does not queue one.
        """
        if session.cipher is not None:
            return True
        sms_bearer = self.ctx.requests.sms_bearer
        return sms_bearer is not None and sms_bearer(terminal) is not None


def _earliest_expiry(creds: CredentialSet) -> int:
    return min(creds.uplink_expiry, creds.downlink_expiry, creds.base_key_expiry)


def _expired(creds: CredentialSet, now: float) -> bool:
    return _earliest_expiry(creds) < now
