"""Long-connection binding of the application interface (spec 6), laid out like h11.

All pure (bytes and time in, events and bytes out):

* :mod:`._wire`: the Command_ID and tag tables (6.3, 6.4), :class:`Header` and
  :func:`parse_frame` (the 28-byte header of AD-05 and one message), TLVs, signing
  (5.2) and the ``E042`` / ``4008`` containers (7.4, 6.7); a TCP stream is cut into
  frames by :class:`m2mgw.protocol.framing.StreamFramer`;
* :mod:`._values` and :mod:`._layouts`: the value codecs and one layout per
  Command_ID (6.5), mapping a body onto the dataclasses of
  :mod:`m2mgw.app.operations` so that both bindings feed one handler;
  :func:`encode_message` / :func:`decode_body` for whole messages;
* :mod:`._events`: what a session reports;
* :mod:`._state` and :mod:`._connection`: :class:`PlatformSession` and
  :class:`ClientSession`, the session rules of 6.6, fragmentation (6.7, with
  :mod:`m2mgw.protocol.fragment`) and the key updates of 7.5 for each side. Their one
  surface: :meth:`~PlatformSession.receive_data` (bytes and time in, events out),
  :meth:`~PlatformSession.data_to_send` (bytes out), :meth:`~PlatformSession.tick`
  and :meth:`~PlatformSession.next_deadline` (time), and
  :meth:`~PlatformSession.connection_lost`.

Every failure caused by input raises :class:`LongConnError` (a :class:`ProtocolError`),
except that framing fails with :class:`~m2mgw.protocol.errors.FramingError`.
"""

from __future__ import annotations

from m2mgw.app.longconn._connection import ClientSession, PlatformSession
from m2mgw.app.longconn._events import (
    AnswerReceived,
    BaseKeyAnnounced,
    Closed,
    Event,
    KeyUpdated,
    LoggedIn,
    LoginConfirmed,
    LoginRejected,
    LoginRequested,
    LogoutReceived,
    RequestFailed,
    RequestReceived,
)
from m2mgw.app.longconn._layouts import (
    LAYOUTS,
    command_for,
    decode_body,
    embeddable,
    encode_body,
    encode_message,
    seal_body,
)
from m2mgw.app.longconn._state import (
    ANSWER_TIMEOUT,
    FRAGMENT_THRESHOLD,
    KEY_REFRESH_AT,
    KEY_REFRESH_RETRY,
    REASSEMBLY_LIMITS,
    SESSION_TTL,
    WINDOW,
    AppCredentials,
    State,
    clamp_heartbeat,
)
from m2mgw.app.longconn._wire import (
    PROTOCOL_VERSION,
    BodyError,
    Command,
    Frame,
    Header,
    HeaderError,
    LongConnError,
    SessionError,
    Tag,
    build_unsigned,
    fragment_of,
    iter_tlvs,
    open_body,
    parse_frame,
    sign_frame,
    tlv,
)

__all__ = [
    "ANSWER_TIMEOUT",
    "FRAGMENT_THRESHOLD",
    "KEY_REFRESH_AT",
    "KEY_REFRESH_RETRY",
    "LAYOUTS",
    "PROTOCOL_VERSION",
    "REASSEMBLY_LIMITS",
    "SESSION_TTL",
    "WINDOW",
    "AnswerReceived",
    "AppCredentials",
    "BaseKeyAnnounced",
    "BodyError",
    "ClientSession",
    "Closed",
    "Command",
    "Event",
    "Frame",
    "Header",
    "HeaderError",
    "KeyUpdated",
    "LoggedIn",
    "LoginConfirmed",
    "LoginRejected",
    "LoginRequested",
    "LogoutReceived",
    "LongConnError",
    "PlatformSession",
    "RequestFailed",
    "RequestReceived",
    "SessionError",
    "State",
    "Tag",
    "build_unsigned",
    "clamp_heartbeat",
    "command_for",
    "decode_body",
    "embeddable",
    "encode_body",
    "encode_message",
    "fragment_of",
    "iter_tlvs",
    "open_body",
    "parse_frame",
    "seal_body",
    "sign_frame",
    "tlv",
]
