"""argparse value types shared by the console scripts."""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def at_least_one(text: str) -> int:
    """An integer >= 1 (process counts): argparse reports anything else as a usage error naming the flag."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def finite_float(min: float | None = None, max: float | None = None, *,
                 min_exclusive: bool = False) -> Callable[[str], float]:
    """argparse type for a finite float within [min, max] (``min_exclusive``: (min, max]); None: unbounded.

    ``float()`` accepts "nan", "inf" and "-inf", which no flag of this package means: NaN compares false with
    everything, so range checks downstream pass it silently. Anything else is an argparse usage error (exit 2)
    naming the flag, e.g. ``argument --dilation-mm: must be a finite number, not 'nan'``.
    """
    if min is not None and max is not None and min > max:
        raise ValueError(f"finite_float: min {min} > max {max}")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
        low_ok = min is None or (value > min if min_exclusive else value >= min)
        if not low_ok or (max is not None and value > max):
            raise argparse.ArgumentTypeError(f"must be {_range_text(min, max, min_exclusive)}, not {text!r}")
        return value

    parse.__name__ = "finite float"  # argparse names the type in its fallback message
    parse.finite_float = (min, max, min_exclusive)  # the bounds, for tests and help texts
    return parse


def _range_text(low: float | None, high: float | None, low_exclusive: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_exclusive else '['}{low:g}, {high:g}]"
    if low is not None:
        return f"{'>' if low_exclusive else '>='} {low:g}"
    return f"<= {high:g}"


positive_float = finite_float(0, min_exclusive=True)  # sizes in mm: > 0
fraction = finite_float(0, 1, min_exclusive=True)  # (0, 1]


def shard(text: str):
    """``--shard I/N`` -> registration.sharding.Shard (I counts from 0); anything else is a usage error."""
    from registration.sharding import Shard

    try:
        return Shard.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


SHARD_HELP = ("run only part I of N of the cases (I = 0..N-1, e.g. ${SLURM_ARRAY_TASK_ID}/4 in a SLURM array): "
              "every N-th case by name, starting at the I-th. Shards run at the same time into the same output; "
              "when all have finished, the same command without --shard checks completeness and finishes "
              "(docs/cluster.md)")


def add_preset_argument(parser: argparse.ArgumentParser, names: tuple[str, ...], legacy: dict[str, str],
                        default: str, help: str) -> None:
    """``--preset NAME``, one vocabulary in every command (tiny: tests, cpu, gpu; the benchmark adds evidence).
    A name in ``legacy`` (old -> new) is still accepted for one more release, with a one-line notice on stderr,
    and left out of --help."""
    import sys

    class Preset(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            if values in legacy:
                print(f"{parser.prog}: note: --preset {values} is deprecated and will be removed in the next "
                      f"release; use --preset {legacy[values]}", file=sys.stderr)
                values = legacy[values]
            setattr(namespace, self.dest, values)

    parser.add_argument("--preset", action=Preset, choices=(*names, *legacy), default=default,
                        metavar="{" + ",".join(names) + "}", help=help)


def deprecated_alias(parser: argparse.ArgumentParser, old: str, new: str, dest: str, **kwargs) -> None:
    """Accept the older spelling ``old`` of the option ``new`` (stored in ``dest``) for one more release, with a
    one-line notice on stderr; hidden from --help."""
    import sys

    class Alias(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"{parser.prog}: note: {old} is deprecated and will be removed in the next release; use {new}",
                  file=sys.stderr)
            setattr(namespace, dest, values)

    parser.add_argument(old, action=Alias, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)

