"""What a session tells its adapter (6.6, 7.5): the events of :meth:`receive_data`,
:meth:`tick` and :meth:`connection_lost`, h11-style plain records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from m2mgw.app import operations as ops


@dataclass(frozen=True, slots=True)
class LoginRequested:
    """Platform: a digest-verified APP_LOGIN awaits :meth:`PlatformSession.accept_login`."""

    sequence_id: int
    app_id: str
    request: ops.Login


@dataclass(frozen=True, slots=True)
class LoggedIn:
    """The session is open (client: ACK received; platform: ACK sent)."""

    response: ops.LoginResponse


@dataclass(frozen=True, slots=True)
class LoginConfirmed:
    """Platform: the first message after the ACK verified under the session timestamp.

    APP_LOGIN itself proves nothing (its digest has TS 0, 5.2, so its bytes can be
    replayed); a message signed with the fresh session timestamp does (D-256).
    """


@dataclass(frozen=True, slots=True)
class LoginRejected:
    """Client: APP_LOGIN_ACK with a failure result (``trusted``: it carried a valid digest)."""

    result: int
    trusted: bool


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A peer request for the application layer; answer with ``session.answer``."""

    sequence_id: int
    command_id: int
    payload: Any
    encrypted: bool


@dataclass(frozen=True, slots=True)
class AnswerReceived:
    sequence_id: int
    command_id: int
    request: Any
    response: Any


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """An own request got no answer (``timeout``) or the session ended first (``closed``)."""

    sequence_id: int
    command_id: int
    request: Any
    reason: str


@dataclass(frozen=True, slots=True)
class KeyUpdated:
    """The Session Key changed (type 1), on both sides."""

    key_type: int


@dataclass(frozen=True, slots=True)
class BaseKeyAnnounced:
    """Client: APP_KEY_UPDATE type 2; the new Base Key applies from ``effective_time``."""

    base_key: str = field(repr=False)
    effective_time: int | None = None


@dataclass(frozen=True, slots=True)
class LogoutReceived:
    """The peer sent APP_LOGOUT (answered already); it will close the connection."""

    reason: int


@dataclass(frozen=True, slots=True)
class Closed:
    """The session is over; write :meth:`data_to_send` then close the transport."""

    reason: str


Event = (
    LoginRequested | LoggedIn | LoginConfirmed | LoginRejected | RequestReceived
    | AnswerReceived | RequestFailed | KeyUpdated | BaseKeyAnnounced | LogoutReceived | Closed
)
