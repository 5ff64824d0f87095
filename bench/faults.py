"""Crash accounting under load, longer: the fault test's harness with more kills (issue #11).

Run as ``.venv/bin/python bench/faults.py [--kills 30] [--terminals 8] [--seed N]``.
A ``twistd -n m2mgw`` gateway on loopback is SIGKILLed at random moments while TCP
terminals send TRANSPARENT_DATA and an application on the long connection sends
SendData; after the last restart everything outstanding drains and every message is
accounted for. The harness and the accounting are those of
``tests/faults/test_crash_accounting.py`` (``tests/faults/harness.py``, D-270..D-279).
It prints the same table and exits 1 when anything acked or accepted was lost.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet import defer, task

from m2mgw.tools.argtypes import at_least_one, positive
from tests.faults.harness import Plan, run


def seconds_range(text: str) -> tuple[float, float]:
    """``LOW,HIGH`` seconds, 0 < LOW <= HIGH."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH seconds, got {text!r}") from None
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError(f"expected 0 < LOW <= HIGH, got {text!r}")
    return low, high


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, help="random seed (default: a new one, printed)")
    parser.add_argument("--kills", type=at_least_one, default=30, help="SIGKILLs (default 30)")
    parser.add_argument("--terminals", type=at_least_one, default=8,
                        help="simulated TCP terminals (default 8)")
    parser.add_argument("--between", type=seconds_range, default=(1.0, 4.0),
                        help="seconds of load before each kill, LOW,HIGH (default 1,4)")
    parser.add_argument("--uplink-window", type=at_least_one, default=2,
                        help="uplinks each terminal keeps in flight (default 2)")
    parser.add_argument("--downlink-window", type=at_least_one, default=4,
                        help="SendData requests the application keeps in flight (default 4)")
    parser.add_argument("--drain", type=positive, default=60,
                        help="seconds the last incarnation may take to deliver (default 60)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the working directory (database, twistd logs)")
    return parser.parse_args(argv)


async def main(reactor: Any, args: argparse.Namespace) -> None:
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"seed {seed} (--seed {seed} repeats it)", flush=True)
    plan = Plan(seed=seed, kills=args.kills, terminals=args.terminals,
                uplink_window=args.uplink_window, downlink_window=args.downlink_window,
                load_between=args.between, drain_timeout=args.drain)
    root = Path(tempfile.mkdtemp(prefix="m2mgw-faults-"))
    lost = True
    try:
        outcome = await run(reactor, plan, root / "run")
        print(outcome.table())
        lost = outcome.lost > 0
    finally:
        if args.keep or lost:
            print(f"working directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if lost:
        raise SystemExit(1)


if __name__ == "__main__":
    arguments = parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
