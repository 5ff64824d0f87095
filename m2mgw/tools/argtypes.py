"""argparse types shared by the command-line tools: a bad value is a usage error (exit 2)
with one line naming it, before anything is opened or connected."""

from __future__ import annotations

import argparse


def positive(text: str) -> float:
    """A number of seconds (or other amount) above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def port(text: str) -> int:
    """A TCP or UDP port to connect to, 1-65535."""
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"not a port (1-65535): {text!r}")
    return int(text)


def listen_port(text: str) -> int:
    """A port to listen on, 0-65535 (0: any free port)."""
    if not (text.isascii() and text.isdigit() and int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"not a port (0-65535): {text!r}")
    return int(text)


def host_port(text: str) -> str:
    """``HOST:PORT``, kept as text."""
    host, _, number = text.rpartition(":")
    if not host:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    port(number)
    return text


def hex_bytes(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not hex: {text!r}") from None
