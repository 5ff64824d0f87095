"""The habits of deployed terminal stacks (spec 1.6), named after the gateway's profiles."""

from __future__ import annotations

from dataclasses import dataclass

from m2mgw.protocol.compat import C7_MAX_FRAME
from m2mgw.protocol.constants import Command


@dataclass(frozen=True, slots=True)
class StackHabits:
    """How a deployed terminal stack departs from the profile on the wire (spec 1.6).

    The simulator reproduces them byte for byte, so that the gateway's compatibility
    profiles (:mod:`m2mgw.protocol.compat`, same names) are tested against what such
    terminals really send. The defaults are a terminal that follows the profile.
    """

    #: Every request and answer with flag 0x00 (the CMCC client's only value).
    zero_flag: bool = False
    #: C1: these requests carry an ``E021`` although flag 0x20 is clear.
    unflagged_digest: frozenset[int] = frozenset()
    #: C4: these requests are signed over the 28-byte header alone.
    header_only_digest: frozenset[int] = frozenset()
    #: C2: the LOGIN sync CRC32 is always 0.
    zero_sync_crc: bool = False
    #: C3: these requests, and (``unsigned_answers``) every answer, carry no digest.
    unsigned: frozenset[int] = frozenset()
    unsigned_answers: bool = False
    #: C8: the Protocol_Version of its answers, whatever the request's.
    answer_version: int | None = None
    #: C5: TRANSPARENT_DATA carries the CMCC CRC16 variant.
    crc16_cmcc: bool = False
    #: C6: integer TLVs little-endian, both ways.
    little_endian: bool = False
    #: C7: a frame longer than this breaks the receiver (Total_Length read modulo 256).
    max_frame: int | None = None
    #: C9: platform requests that are never answered.
    ignored: frozenset[int] = frozenset()
    #: PD-06: REGISTER op 3 is sent without a digest (flag 0x80).
    unsigned_register_op3: bool = False


HABITS: dict[str, StackHabits] = {
    "strict": StackHabits(),
    "cmcc-javame": StackHabits(
        zero_flag=True,
        unflagged_digest=frozenset({Command.LOGIN, Command.CONFIG_TRAP}),
        header_only_digest=frozenset({Command.CONFIG_TRAP}),
        zero_sync_crc=True,
        unsigned=frozenset({Command.LOGOUT, Command.TRANSPARENT_DATA, Command.CONFIG_REQ}),
        unsigned_answers=True,
        answer_version=0x0301,
        crc16_cmcc=True,
        little_endian=True,
        max_frame=C7_MAX_FRAME,
        ignored=frozenset({Command.CONFIG_GET, Command.TRANSPARENT_DATA, Command.DOWNLOAD_INFO}),
    ),
    "simcom": StackHabits(unsigned_register_op3=True),
}
"""The habits of each stack, by the name of the gateway's profile made for it."""
