"""How records are printed: JSON, or a table with the next page's hint; secrets masked."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from m2mgw.web import views


def show_page(
    page: views.Page,
    args: argparse.Namespace,
    columns: Sequence[str],
    row: Callable[[dict[str, Any]], dict[str, Any]] = dict,
) -> int:
    """The page as a table of ``row(item)`` (or JSON); where the next page starts goes
    to stderr."""
    if args.json:
        print_record(page, args)
        return 0
    _table([row(item) for item in _shown(page["items"], args)], columns)
    following = page.get("next")
    if following:
        options = parse_qs(urlsplit(following).query)
        start = (f"--before {options['before'][0]}" if "before" in options
                 else f"--offset {options['offset'][0]}")
        total = page.get("total")
        of = f" of {total}" if total is not None else ""
        print(f"m2mgw: {len(page['items'])}{of} shown; more with {start}", file=sys.stderr)
    return 0


def _shown(value: Any, args: argparse.Namespace) -> Any:
    """What may be printed: secrets masked unless ``--show-secrets`` (D-193)."""
    return value if getattr(args, "show_secrets", False) else views.redact(value)


def print_record(value: Any, args: argparse.Namespace) -> None:
    """``value`` as JSON: one line with ``--json``, else indented."""
    value = _shown(value, args)
    print(json.dumps(value) if args.json else json.dumps(value, indent=2))


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    for line in [[c.upper() for c in columns], *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    return str(value)

