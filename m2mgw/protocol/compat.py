"""Compatibility profiles (spec 1.6): named, frozen sets of accommodations per terminal.

A deployed terminal stack that departs from the profile can be served without
weakening anyone else: the operator provisions it with a profile (``--compat``), and
the engine, the router and the codec consult that profile at exactly the points where
they would otherwise refuse. ``strict``, the default, accommodates nothing. Each field
of :class:`CompatProfile` is one accommodation, named after the departure of 1.6 (or
the profile decision) it accepts; docs/decisions.rst records its security cost
(D-230..D-239).

What a profile accepts is never silent either: everything a profile refuses is
counted and logged through :mod:`m2mgw.core.refusals`, with :func:`would_accept`
naming the accommodation that would have accepted it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from m2mgw.protocol.constants import ACK_BIT, Command
from m2mgw.protocol.tags import swap_integer
from m2mgw.protocol.tlv import Tlv

#: The largest frame a C7 terminal reads: it takes Total_Length modulo 256 (1.6 C7).
C7_MAX_FRAME = 255


@dataclass(frozen=True, slots=True)
class CompatProfile:
    """One profile; every default is the strict rule of the profile document."""

    name: str
    description: str
    #: C1: an ``E021`` that ends a message whose flag ``0x20`` is clear counts as its
    #: digest when it verifies over the bytes as sent.
    digest_without_flag: bool = False
    #: C2: a LOGIN sync CRC32 of 0 means "not tracked": LOGIN_ACK result 0, not 1.
    sync_crc_zero_untracked: bool = False
    #: C3: requests accepted without a digest, only on the TCP connection bound to the
    #: terminal's logged-in session (never UDP or SMS).
    unsigned_requests: frozenset[int] = frozenset()
    #: C3: the terminal's answers to platform requests, on that connection only.
    unsigned_answers: bool = False
    #: C5: TRANSPARENT_DATA CRC16 in the CMCC variant (:func:`~m2mgw.protocol.checksum.crc16_cmcc`).
    crc16_cmcc: bool = False
    #: C6: integer TLV values little-endian, both ways.
    little_endian_integers: bool = False
    #: C7: no frame longer than this is sent to the terminal; None: no limit.
    max_frame: int | None = None
    #: C9: platform requests the terminal cannot take: they fail at once.
    refused_requests: frozenset[int] = frozenset()
    #: PD-06: REGISTER op 3 without a digest, on the proofs alone.
    register_op3_digest_optional: bool = False
    #: The departures of 1.6 (or profile decisions) this profile is made for.
    departures: tuple[str, ...] = field(default=())

    def accepts_unsigned(self, command_id: int) -> bool:
        """Whether C3 lets this request or answer in without a digest (bound TCP only)."""
        if command_id & ACK_BIT:
            return self.unsigned_answers
        return command_id in self.unsigned_requests


STRICT = CompatProfile("strict", "the profile document, to the letter")

CMCC_JAVAME = CompatProfile(
    "cmcc-javame",
    "the CMCC Java ME WMMP client (jp.co.cmcc.wmmp)",
    digest_without_flag=True,
    sync_crc_zero_untracked=True,
    unsigned_requests=frozenset({Command.LOGOUT, Command.TRANSPARENT_DATA, Command.CONFIG_REQ}),
    unsigned_answers=True,
    crc16_cmcc=True,
    little_endian_integers=True,
    max_frame=C7_MAX_FRAME,
    refused_requests=frozenset(
        {Command.CONFIG_GET, Command.DOWNLOAD_INFO, Command.TRANSPARENT_DATA}
    ),
    departures=("C1", "C2", "C3", "C5", "C6", "C7", "C9"),
)

SIMCOM = CompatProfile(
    "simcom",
    "the SIMCom WMMP 3.0 terminal library",
    register_op3_digest_optional=True,
    departures=("PD-06",),
)

PROFILES: dict[str, CompatProfile] = {p.name: p for p in (STRICT, CMCC_JAVAME, SIMCOM)}
NAMES: tuple[str, ...] = tuple(PROFILES)


def profile(name: str) -> CompatProfile:
    """The profile called ``name``; ValueError naming the known ones otherwise."""
    found = PROFILES.get(name)
    if found is None:
        raise ValueError(f"unknown compatibility profile {name!r}; one of {', '.join(NAMES)}")
    return found


def would_accept(accommodation: str, what: str) -> str:
    """The line that tells the operator which profile would have taken a refused message,
    e.g. ``this terminal sends unsigned TRANSPARENT_DATA; the cmcc-javame profile
    accepts it (C3)``."""
    for candidate in PROFILES.values():
        if accommodation in candidate.departures:
            return (
                f"this terminal {what}; the {candidate.name} profile accepts it ({accommodation})"
            )
    return f"this terminal {what}; no profile accepts it ({accommodation})"


def unsigned_hint(command_id: int, name: str) -> str | None:
    """The C3 line for an unsigned message, if some profile accepts it unsigned."""
    for candidate in PROFILES.values():
        if candidate.accepts_unsigned(command_id):
            return (
                f"this terminal sends unsigned {name}; the {candidate.name} profile accepts "
                "it (C3) on the TCP connection of the logged-in session"
            )
    return None


def integers_swapped(tlvs: Iterable[Tlv]) -> list[Tlv]:
    """The TLVs with every integer value in the other byte order (C6, both ways)."""
    return [Tlv(t.tag, swap_integer(t.tag, t.raw)) for t in tlvs]


class ProfileRefused(Exception):
    """A platform request the terminal's profile cannot carry (C7, C9): it fails at once,
    before anything is queued; ``too_large`` for the frame limit of C7."""

    def __init__(self, reason: str, *, too_large: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.too_large = too_large
