"""The admin API's inputs: JSON bodies and the typed query parameters of listings (D-194).

Every problem is an :class:`ApiError` with the status that tells the operator what to
fix: 400 for a bad value, 413 for a body too large.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from twisted.web.server import Request

from m2mgw.web import views

MAX_BODY = 64 * 1024


class ApiError(Exception):
    """An error answer with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_body(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, at most MAX_BODY bytes."""
    assert request.content is not None
    data = request.content.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise ApiError(413, f"request body larger than {MAX_BODY} bytes")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        raise ApiError(400, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def raw(request: Request, name: str) -> list[str]:
    """Query values of ``name`` as given (``search`` may hold commas)."""
    values = request.args.get(name.encode("ascii"), []) if request.args else []
    return [value.decode("utf-8", "replace") for value in values]


#: Parses the values of one query parameter (name, values) into its typed value.
Parse = Callable[[str, list[str]], Any]


def text(name: str, values: list[str]) -> str | None:
    """The last value, stripped; None when empty."""
    return values[-1].strip() or None


def flag(name: str, values: list[str]) -> bool | None:
    """``1``/``true``/``yes`` or ``0``/``false``/``no`` (an empty value is false)."""
    if not values:
        return None
    if values[-1].lower() not in ("1", "true", "yes", "0", "false", "no", ""):
        raise ApiError(400, f"{name} must be 1 or 0, got {values[-1]!r}")
    return values[-1].lower() in ("1", "true", "yes")


def integer(lo: int, hi: int) -> Parse:
    """An integer ``lo``-``hi`` written as a Python literal (``17``, ``0x11``)."""

    def parse(name: str, values: list[str]) -> int:
        try:
            value = int(values[-1], 0)
        except ValueError:
            value = lo - 1
        if not lo <= value <= hi:
            raise ApiError(400, f"{name} must be an integer {lo}-{hi}, got {values[-1]!r}")
        return value

    return parse


def choices(known: Iterable[str]) -> Parse:
    """A comma list of known words (``state=queued,sent``), case-insensitive."""
    words = tuple(known)

    def parse(name: str, values: list[str]) -> list[str]:
        chosen = [v.strip().lower() for given in values for v in given.split(",") if v.strip()]
        bad = [v for v in chosen if v not in words]
        if bad:
            raise ApiError(400, f"unknown {name} {bad[0]!r}; one of {', '.join(words)}")
        return chosen

    return parse


def listing(request: Request, **filters: Parse) -> dict[str, Any]:
    """The paging (``limit``, ``offset``, ``before``) and ``filters`` of a listing, typed
    and checked; what was not given is left out (D-194)."""
    parsers: dict[str, Parse] = {
        "limit": integer(1, views.MAX_LIMIT),
        "offset": integer(0, 1 << 31),
        "before": integer(1, 1 << 62),
        "show_secrets": flag,
        **filters,
    }
    query = {}
    for name, parse in parsers.items():
        values = raw(request, name)
        if values and (value := parse(name, values)) is not None:
            query[name] = value
    return query


def one_of(*words: str) -> Parse:
    """Exactly one of ``words``."""
    choose = choices(words)

    def parse(name: str, values: list[str]) -> str:
        chosen = choose(name, values[-1:])
        if len(chosen) != 1:
            raise ApiError(400, f"{name} must be one of {', '.join(words)}")
        return chosen[0]

    return parse

