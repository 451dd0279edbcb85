"""argparse value types shared by the console scripts."""
from __future__ import annotations

import argparse


def at_least_one(text: str) -> int:
    """An integer >= 1 (process counts): argparse reports anything else as a usage error naming the flag."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
