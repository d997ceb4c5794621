"""The allowed range of every numeric training setting, in one place.

The training loop's checks (:class:`gmflow.harness.train.LoopSettings`, :class:`~gmflow.harness.train.TrainConfig`)
and the command-line types (:func:`argtype`) read these; the workflow's JSON schema states the same bounds, and
tests/test_config.py checks that every bound of the schema equals the one here. NaN and infinity are never in range
(a NaN passes every ``<`` and ``>`` test, so finiteness is checked first).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """``low <= x <= high`` (``<`` where exclusive); ``None`` = unbounded on that side. Always finite."""

    low: float | None = None
    high: float | None = None
    low_exclusive: bool = False
    high_exclusive: bool = False

    def contains(self, x: float) -> bool:
        if not isinstance(x, (int, float)) or not math.isfinite(x):
            return False
        if self.low is not None and (x <= self.low if self.low_exclusive else x < self.low):
            return False
        return not (self.high is not None and (x >= self.high if self.high_exclusive else x > self.high))

    def __str__(self) -> str:
        lo = "(-inf" if self.low is None else ("(" if self.low_exclusive else "[") + f"{self.low:g}"
        hi = "inf)" if self.high is None else f"{self.high:g}" + (")" if self.high_exclusive else "]")
        return f"{lo}, {hi}"

    def schema(self) -> dict:
        """The JSON-schema keywords of this range."""
        out = {}
        if self.low is not None:
            out["exclusiveMinimum" if self.low_exclusive else "minimum"] = self.low
        if self.high is not None:
            out["exclusiveMaximum" if self.high_exclusive else "maximum"] = self.high
        return out


POSITIVE = Range(0, None, low_exclusive=True)
NON_NEGATIVE = Range(0, None)
UNIT = Range(0, 1, low_exclusive=True)  # (0, 1]

RANGES: dict[str, Range] = {
    "lr": UNIT,
    "weight_decay": NON_NEGATIVE,
    "ema_gamma": NON_NEGATIVE,
    "grad_clip": NON_NEGATIVE,
    "ema_kimg": POSITIVE,
    "ema_rampup": UNIT,
    "trans_ratio": UNIT,
    "label_dropout": Range(0, 1, high_exclusive=True),
    "weight_scale": POSITIVE,
    "spectral_weight": NON_NEGATIVE,
    "time_shift": POSITIVE,
    # the finest period of the 2D MLP's position features, below its coarsest (gmflow.harness.mlp2d.MAX_PERIOD)
    "min_period": Range(0, 50.0, low_exclusive=True, high_exclusive=True),
}


def check(name: str, value: float) -> float:
    """``value`` if it lies in ``RANGES[name]``; else ``ValueError`` naming the setting, the value and the range."""
    r = RANGES[name]
    if not r.contains(value):
        raise ValueError(f"training setting {name} = {value!r} is out of range: it must be a finite number in {r}")
    return value


def argtype(name: str):
    """An argparse ``type`` that reads a float and checks it against ``RANGES[name]``."""

    def parse(s: str) -> float:
        try:
            return check(name, float(s))
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = name
    return parse
