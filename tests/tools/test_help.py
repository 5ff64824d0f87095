"""Every option of the newcomer's tools says what it does in ``--help`` (issue #8)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from m2mgw.tools import app, modem_emulator, terminal

PARSERS = {
    "m2mgw-terminal": terminal.parser,
    "m2mgw-app": app.make_parser,
    "m2mgw-modem-emulator": modem_emulator.make_parser,
}


def walk(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.Action]]:
    """Every action of ``parser`` and of its subcommands, with where it is."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {where}", a) for where, a in walk(sub))
        else:
            yield "/".join(action.option_strings) or action.dest, action


@pytest.mark.parametrize("tool", sorted(PARSERS))
def test_every_option_has_help(tool: str) -> None:
    missing = [where for where, action in walk(PARSERS[tool]())
               if not action.help or action.help == argparse.SUPPRESS]  # fmt: skip
    assert missing == []


@pytest.mark.parametrize("tool", sorted(PARSERS))
def test_help_is_printed(tool: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        PARSERS[tool]().parse_args(["--help"])
    assert exit_.value.code == 0
    assert "--" in capsys.readouterr().out
