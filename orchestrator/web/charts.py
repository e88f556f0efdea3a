"""SVG charts drawn on the server: numbers in, markup out (no JavaScript, no chart library, no CDN).

Pure functions; every piece of text is XML-escaped, every coordinate is a finite number. The
dashboard's Content-Security-Policy allows no inline style, so sizes are SVG attributes, never
``style=`` (attributes are not styles to CSP).

- ``line_chart``: a polyline over (x, y) points with optional horizontal reference line (the
  ε cap), axis labels with the min/max of each axis, and a dot per point. Non-finite y values
  (ε = +inf after a non-private release) are drawn at the top edge and marked ``inf``.
- ``share_bar``: a small horizontal bar of ``spent / cap`` for tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from xml.sax.saxutils import escape, quoteattr

WIDTH = 640
HEIGHT = 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 16, 36


def _fmt(value: float) -> str:
    """A coordinate: two decimals, no exponent, no '-0.00'."""
    text = f"{value:.2f}"
    return "0.00" if text == "-0.00" else text


def _label(value: float) -> str:
    if not math.isfinite(value):
        return "inf"
    return f"{value:.4g}"


def _span(low: float, high: float) -> tuple[float, float]:
    if high - low > 1e-12:
        return low, high
    pad = abs(low) * 0.1 or 1.0
    return low - pad, high + pad


def line_chart(
    points: Sequence[tuple[float, float]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    reference: float | None = None,
    reference_label: str = "cap",
    y_from_zero: bool = True,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> str:
    """An ``<svg>`` line chart of ``points`` (sorted by x here), with ``reference`` drawn dashed.

    The y axis spans the points and the reference (from 0 when ``y_from_zero``), so the cap is
    always visible, however far below it the curve is.
    """
    ordered = sorted((float(x), float(y)) for x, y in points)
    finite_y = [y for _, y in ordered if math.isfinite(y)]
    candidates = [*finite_y, *([reference] if reference is not None and math.isfinite(reference) else [])]
    low = min([0.0, *candidates]) if y_from_zero else min(candidates, default=0.0)
    y_low, y_high = _span(low, max(candidates, default=1.0))
    xs = [x for x, _ in ordered]
    x_low, x_high = _span(min(xs, default=0.0), max(xs, default=1.0))
    plot_w = width - _LEFT - _RIGHT
    plot_h = height - _TOP - _BOTTOM

    def px(x: float) -> float:
        return _LEFT + (x - x_low) / (x_high - x_low) * plot_w

    def py(y: float) -> float:
        if not math.isfinite(y):
            return float(_TOP)
        return _TOP + (y_high - y) / (y_high - y_low) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {width} {height}"'
        f' width="{width}" height="{height}" aria-label={quoteattr(title)}>',
        f"<title>{escape(title)}</title>",
        f'<rect class="plot" x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="none"'
        ' stroke="#999" stroke-width="1"/>',
    ]
    if not ordered:
        parts.append(
            f'<text x="{width // 2}" y="{height // 2}" text-anchor="middle" fill="#666">no data yet</text>'
        )
    if reference is not None and math.isfinite(reference):
        ry = _fmt(py(reference))
        parts.append(
            f'<line class="reference" x1="{_LEFT}" y1="{ry}" x2="{width - _RIGHT}" y2="{ry}"'
            ' stroke="#c0392b" stroke-width="1.5" stroke-dasharray="6 4"/>'
        )
        parts.append(
            f'<text x="{width - _RIGHT - 4}" y="{_fmt(py(reference) - 4)}" text-anchor="end"'
            f' fill="#c0392b" font-size="12">{escape(reference_label)} {escape(_label(reference))}</text>'
        )
    if ordered:
        coords = " ".join(f"{_fmt(px(x))},{_fmt(py(y))}" for x, y in ordered)
        parts.append(
            f'<polyline class="series" points="{coords}" fill="none" stroke="#1f6feb" stroke-width="2"/>'
        )
        for x, y in ordered:
            parts.append(
                f'<circle cx="{_fmt(px(x))}" cy="{_fmt(py(y))}" r="3" fill="#1f6feb">'
                f"<title>{escape(_label(x))}: {escape(_label(y))}</title></circle>"
            )
            if not math.isfinite(y):
                parts.append(
                    f'<text x="{_fmt(px(x))}" y="{_TOP + 12}" text-anchor="middle" fill="#c0392b"'
                    ' font-size="11">inf</text>'
                )
    axis_y = height - _BOTTOM
    parts += [
        f'<text x="{_LEFT}" y="{axis_y + 16}" font-size="11" fill="#333">{escape(_label(x_low if ordered else 0))}</text>',
        f'<text x="{width - _RIGHT}" y="{axis_y + 16}" font-size="11" fill="#333" text-anchor="end">'
        f"{escape(_label(x_high if ordered else 0))}</text>",
        f'<text x="{_LEFT + plot_w // 2}" y="{height - 4}" font-size="12" fill="#333" text-anchor="middle">'
        f"{escape(x_label)}</text>",
        f'<text x="{_LEFT - 6}" y="{_fmt(py(y_high) + 4)}" font-size="11" fill="#333" text-anchor="end">'
        f"{escape(_label(y_high))}</text>",
        f'<text x="{_LEFT - 6}" y="{_fmt(py(y_low))}" font-size="11" fill="#333" text-anchor="end">'
        f"{escape(_label(y_low))}</text>",
        f'<text x="12" y="{_TOP + plot_h // 2}" font-size="12" fill="#333" text-anchor="middle"'
        f' transform="rotate(-90 12 {_TOP + plot_h // 2})">{escape(y_label)}</text>',
        "</svg>",
    ]
    return "".join(parts)


def share_bar(spent: float, cap: float, status: str, *, width: int = 120, height: int = 12) -> str:
    """A bar filled to ``spent / cap`` (clamped to [0, 1]; full when spent is +inf or cap is 0)."""
    if cap > 0 and math.isfinite(spent):
        share = min(max(spent / cap, 0.0), 1.0)
    else:
        share = 1.0 if spent > 0 or not math.isfinite(spent) else 0.0
    color = {"exhausted": "#c0392b", "near_cap": "#d68910"}.get(status, "#1e8449")
    label = f"{_label(spent)} of {_label(cap)} ({share * 100:.0f}%)"
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="bar" role="img" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" aria-label={quoteattr(label)}><title>{escape(label)}</title>'
        f'<rect width="{width}" height="{height}" fill="#e5e7eb"/>'
        f'<rect class="fill" width="{_fmt(share * width)}" height="{height}" fill="{color}"/></svg>'
    )
