"""Summary of a py-spy profile in collapsed-stack form (``py-spy record --format raw``).

Each line of the file is ``frame;frame;...;leaf <samples>`` (outermost frame first), a frame
being ``function (file:line)``. :func:`summarize` gives, per function (``function (file)``,
line numbers dropped), its *self* share (samples where it is the leaf) and its *inclusive*
share (samples with it anywhere on the stack, counted once per sample), largest first.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_LINENO = re.compile(r":\d+\)$")


@dataclass(frozen=True)
class FunctionShare:
    function: str
    self_pct: float
    inclusive_pct: float


def _function(frame: str) -> str:
    return _LINENO.sub(")", frame.strip())


def summarize(text: str, top: int = 20) -> tuple[int, list[FunctionShare], list[FunctionShare]]:
    """(total samples, top by self share, top by inclusive share) of a collapsed profile.
    A line that is not ``stack count`` raises ``ValueError`` naming its number and text."""
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    total = 0
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if m is None:
            raise ValueError(f"collapsed stacks line {n}: not 'stack count': {line[:120]!r}")
        count = int(m["count"])
        frames = [_function(f) for f in m["stack"].split(";") if f.strip()]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        for f in set(frames):
            incl_counts[f] += count

    def shares(counter: Counter[str]) -> list[FunctionShare]:
        return [
            FunctionShare(
                f,
                round(100 * self_counts[f] / total, 1),
                round(100 * incl_counts[f] / total, 1),
            )
            for f, _ in counter.most_common(top)
        ]

    if total == 0:
        return 0, [], []
    return total, shares(self_counts), shares(incl_counts)


def summarize_file(
    path: Path, top: int = 20
) -> tuple[int, list[FunctionShare], list[FunctionShare]]:
    return summarize(path.read_text(), top)
