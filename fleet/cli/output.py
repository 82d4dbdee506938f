"""What people read: aligned tables on stdout, progress on stderr (a bar on a
terminal, plain lines in a CI log)."""

from __future__ import annotations

import json
import sys


def table(headers: list[str], rows: list[list], out=None) -> None:
    out = out or sys.stdout
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), file=out)
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def dump_json(data) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def note(message: str) -> None:
    """A line for the person (stderr), so stdout stays what a script captures."""
    print(message, file=sys.stderr, flush=True)


class Progress:
    """`update(fraction, text)`: a redrawn bar on a TTY, else one line per change."""

    WIDTH = 30

    def __init__(self, label: str, stream=None):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.label = label
        self.last: tuple | None = None

    def update(self, fraction: float | None, text: str = "") -> None:
        fraction = min(1.0, max(0.0, fraction or 0.0))
        percent = int(fraction * 100)
        if self.tty:
            filled = int(fraction * self.WIDTH)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            line = f"\r{self.label} [{bar}] {percent:3d}% {text}"[:200]
            self.stream.write(line.ljust(120)[:200])
            self.stream.flush()
            return
        state = (percent // 10, text)
        if state != self.last:
            self.last = state
            print(f"{self.label} {percent:3d}% {text}".rstrip(), file=self.stream, flush=True)

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
