"""Number formatting shared by the reports (report.md, report.html) and the terminal: one spelling
of a percentage, a number, a signed difference and a parameter count everywhere.

``none`` is what a missing value (None) prints as: "-" in plain text and markdown, an en dash in
the HTML page.
"""

from __future__ import annotations


def percent(v: float | None, digits: int = 2, none: str = "-") -> str:
    """A fraction as a percentage: 0.7333 -> "73.33%"."""
    return none if v is None else f"{100 * v:.{digits}f}%"


def number(v: float | None, spec: str = ".1f", none: str = "-") -> str:
    """A number in a format spec: number(0.8061, ".3g") -> "0.806"."""
    return none if v is None else format(v, spec)


def points(v: float | None, digits: int = 2, none: str = "-") -> str:
    """A difference of two fractions in signed percentage points: 0.0123 -> "+1.23"."""
    return none if v is None else f"{100 * v:+.{digits}f}"


def params(n: int | None, none: str = "-") -> str:
    """A parameter count: "1.23M" from 100K up, "54.3K" below."""
    if n is None:
        return none
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"
