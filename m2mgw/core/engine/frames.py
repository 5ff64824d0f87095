"""Frames the platform sends: signed, encrypted and fragmented (spec 6.1-6.4, 7), as the
terminal's compatibility profile reads them (spec 1.6).

One :class:`FrameBuilder` serves the engine's answers and the router's requests, so
that both sign, encrypt, split and refuse by the same rules.
"""

from __future__ import annotations

from dataclasses import replace

from m2mgw.config import ProtocolConfig
from m2mgw.core.engine.exchange import Exchange
from m2mgw.core.model import Terminal
from m2mgw.core.refusals import Reason, Refusals, TerminalKeys
from m2mgw.core.session import Bearer
from m2mgw.core.sessions import AnswerParts, SessionTable
from m2mgw.protocol import compat, tags
from m2mgw.protocol import messages as m
from m2mgw.protocol.codec import (
    ENCRYPTED_FLAG,
    FRAGMENT_FLAG,
    build_frame,
    encrypted_container,
)
from m2mgw.protocol.compat import CompatProfile, ProfileRefused, would_accept
from m2mgw.protocol.constants import (
    ACK_BIT,
    DIGEST_TLV_SIZE,
    HEADER_SIZE,
    Command,
    Flag,
)
from m2mgw.protocol.errors import ProtocolError
from m2mgw.protocol.fragment import FragmentPart, FragmentSender
from m2mgw.protocol.header import Header
from m2mgw.protocol.security import DigestKey
from m2mgw.protocol.tlv import Tlv

#: The protocol version of a request to a terminal that never said its own.
DEFAULT_VERSION = 0x0300
# Answers never encrypted (6.4.3).
_NEVER_ENCRYPTED = frozenset(
    {Command.REGISTER | ACK_BIT, Command.LOGIN | ACK_BIT, Command.HEART_BEAT | ACK_BIT}
)


class FrameBuilder:
    """Builds the platform's frames from the sessions' keys and the profiles."""

    def __init__(self, sessions: SessionTable, config: ProtocolConfig, refusals: Refusals) -> None:
        self.sessions = sessions
        self.config = config
        self.refusals = refusals

    def profile_of(self, terminal: Terminal | None) -> CompatProfile:
        """The terminal's compatibility profile (spec 1.6): its own, else the deployment's
        ``default_compat``; ``strict`` for a message from no known terminal."""
        if terminal is None:
            return compat.STRICT
        return compat.profile(terminal.compat or self.config.default_compat)

    # ------------------------------------------------------------------ answers

    def answer(
        self, ex: Exchange, message: m.Message, flag: int | None, encrypt: bool
    ) -> bytes | None:
        """The answer frame to ``ex``, signed and encrypted per 6.1-6.4, its first part if
        it is fragmented (7.3); None if it is larger than the terminal reads (C7)."""
        header = ex.header
        profile = self.profile_of(ex.terminal)
        if profile.little_endian_integers and message.tlvs:
            body = replace(message, tlvs=compat.integers_swapped(message.tlvs)).encode_body()
        else:
            body = message.encode_body()
        if flag is None:
            flag = _default_flag(message.COMMAND)
        key = None if ex.sms else ex.key
        session = ex.session
        if (
            encrypt
            and not ex.sms
            and session is not None
            and session.cipher is not None
            and body
            and message.COMMAND not in _NEVER_ENCRYPTED
        ):
            body = encrypted_container(session.cipher, body)
            flag = Flag.AUTH | Flag.KEY_REQUEST | Flag.CONTAINER
        limit = profile.max_frame
        if limit is not None and HEADER_SIZE + len(body) + DIGEST_TLV_SIZE * bool(key) > limit:
            return None
        if len(body) > self.config.fragment_threshold and key is not None:
            return self._first_answer_part(ex, message.COMMAND, body, flag, key)
        return build_frame(
            message.COMMAND,
            header.sequence_id,
            header.serial,
            body,
            version=header.version,
            flag=flag,
            key=key,
            timestamp=ex.timestamp,
        )

    def _first_answer_part(
        self, ex: Exchange, command_id: int, body: bytes, flag: int, key: DigestKey
    ) -> bytes:
        """Start a fragmented answer (7.3): part 1 now, the rest as the terminal asks."""
        header = ex.header
        terminal = ex.terminal
        trans_id = terminal.next_trans() if terminal is not None else 1
        sender = FragmentSender(body, trans_id, self.config.fragment_threshold)
        encrypted = bool(flag & Flag.CONTAINER)
        parts = AnswerParts(
            sender=sender,
            command_id=command_id,
            version=header.version,
            flag=(ENCRYPTED_FLAG if encrypted else FRAGMENT_FLAG) & ~Flag.DIGEST,
        )
        self.sessions.record(header.serial).answer_parts[command_id & ~ACK_BIT] = parts
        return self.answer_part(parts, sender.first(), ex, key)

    @staticmethod
    def answer_part(parts: AnswerParts, part: FragmentPart, ex: Exchange, key: DigestKey) -> bytes:
        """Part ``part`` of a fragmented answer, in reply to ``ex``."""
        header = ex.header
        return build_frame(
            parts.command_id,
            header.sequence_id,
            header.serial,
            part.encode_tlv(),
            version=parts.version,
            flag=parts.flag,
            key=key,
            timestamp=ex.timestamp,
        )

    @staticmethod
    def reassembly_reply(ex: Exchange, reply: FragmentPart) -> bytes:
        """The answer to one part of a fragmented request: the part wanted next (7.4)."""
        header: Header = ex.header
        return build_frame(
            header.command_id | ACK_BIT,
            header.sequence_id,
            header.serial,
            reply.encode_tlv(),
            version=header.version,
            flag=FRAGMENT_FLAG & ~Flag.DIGEST,
            key=ex.key,
            timestamp=ex.timestamp,
        )

    # ------------------------------------------------------------------ platform requests

    def request_frames(
        self, terminal: Terminal, command: int, sequence_id: int, body: bytes, bearer: Bearer
    ) -> list[bytes]:
        """The frame(s) of a platform-initiated request on ``bearer`` (6.1, 6.4, 7).

        More than one frame means the body is fragmented: the caller sends the first
        and the router hands out the others as the terminal asks for them.
        """
        serial = terminal.serial or ""
        session = self.sessions.get(serial)
        version = session.version if session else terminal.protocol_version or DEFAULT_VERSION
        self.check_deliverable(terminal, command, body)
        if self.profile_of(terminal).little_endian_integers:
            message = m.decode_message(command, body)
            message.tlvs = compat.integers_swapped(message.tlvs)  # C6, as the terminal reads
            body = message.encode_body()
        if bearer.kind == "sms":
            flag = Flag.AUTH if command == Command.SECURITY_CONFIG else Flag.NONE
            return [build_frame(command, sequence_id, serial, body, version=version, flag=flag)]
        if session is None:
            raise ProtocolError(f"no session for {serial} to sign a request in")
        flag = Flag.AUTH if command == Command.SECURITY_CONFIG else Flag.NONE
        if session.cipher is not None and body:
            body = encrypted_container(session.cipher, body)
            flag = Flag.AUTH | Flag.KEY_REQUEST | Flag.CONTAINER
            self.check_deliverable(terminal, command, body)  # C7 once the cipher padded it
        return [
            build_frame(
                command,
                sequence_id,
                serial,
                body,
                version=version,
                flag=flag,
                key=session.down,
                timestamp=session.timestamp,
            )
        ]

    def request_part(
        self, terminal: Terminal, command: int, sequence_id: int, part: FragmentPart
    ) -> bytes:
        """Part ``part`` of a fragmented platform request, signed in its session (7.3)."""
        session = self.sessions[terminal.serial or ""]
        return build_frame(
            command,
            sequence_id,
            terminal.serial or "",
            part.encode_tlv(),
            version=session.version,
            flag=FRAGMENT_FLAG & ~Flag.DIGEST,
            key=session.down,
            timestamp=session.timestamp,
        )

    def check_deliverable(self, terminal: Terminal, command: int, body: bytes) -> None:
        """Refuse, at once and reported, a platform request the terminal's profile cannot
        carry: a command it cannot take (C9), or a frame beyond what it reads (C7).

        Raises :class:`~m2mgw.protocol.compat.ProfileRefused` with the reason for the
        operator or application; the router calls this before queueing and sending.
        """
        profile = self.profile_of(terminal)
        name = m.MESSAGE_NAMES[command]
        limit = profile.max_frame
        size = HEADER_SIZE + len(body) + DIGEST_TLV_SIZE
        if command in profile.refused_requests:
            refused = ProfileRefused(
                f"{name} is never sent to a {profile.name} terminal: it cannot take one (C9)"
            )
        elif limit is not None and size > limit:
            refused = ProfileRefused(
                f"{name} of {size} bytes is more than the {limit}-byte frames a "
                f"{profile.name} terminal reads (C7)",
                too_large=True,
            )
        else:
            return
        self.refusals.report(Reason.PROFILE, refused.reason, serial=terminal.serial, command=name)
        raise refused

    def value_refused(self, terminal: Terminal | None, tlv: Tlv, keys: TerminalKeys) -> bool:
        """True, and reported, when a value the terminal reports is outside its tag's
        range (D-240): whatever the profile, such a value is never stored."""
        problem = tags.value_error(tlv.tag, tlv.raw)
        if problem is None:
            return False
        swapped = tags.swap_integer(tlv.tag, tlv.raw)
        hint = None
        if (
            not self.profile_of(terminal).little_endian_integers
            and tags.value_error(tlv.tag, swapped) is None
        ):
            number = int.from_bytes(swapped, "big")
            hint = would_accept("C6", f"may send integers little-endian (read so: {number:,})")
        self.refusals.report(Reason.OUT_OF_RANGE, f"{problem}: not stored", hint=hint, **keys)
        return True


def _default_flag(command_id: int) -> int:
    """The flag values of the table in spec 6.1."""
    if command_id in (Command.REGISTER | ACK_BIT, Command.LOGIN | ACK_BIT):
        return Flag.AUTH
    if command_id & ~ACK_BIT == Command.SECURITY_CONFIG:
        return Flag.AUTH
    return Flag.NONE
