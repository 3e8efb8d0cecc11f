"""Small inline SVG charts for the cohort report (bars, histogram, scatter); no plotting library needed.

Every label is escaped here; numbers are formatted here, so the SVG holds no text from files unescaped.
"""

from __future__ import annotations

from html import escape

W, H, PAD = 372, 220, 48
CLASS_COLOURS = {"Normal": "#2b8a3e", "Pneumonia": "#e67700", "COVID-19": "#c92a2a"}
OTHER_COLOUR = "#1c7ed6"


def colour(name: str | None) -> str:
    return CLASS_COLOURS.get(name or "", OTHER_COLOUR)


def _frame(body: list[str], title: str, x_label: str, y_label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" '
            f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
            f'<rect x="{PAD}" y="8" width="{W - PAD - 8}" height="{H - PAD - 8}" fill="#f8f9fa" stroke="#adb5bd"/>'
            + "".join(body)
            + f'<text x="{(W + PAD) / 2:.0f}" y="{H - 4}" text-anchor="middle" font-size="11">{escape(x_label)}</text>'
            f'<text x="10" y="{(H - PAD) / 2:.0f}" text-anchor="middle" font-size="11" '
            f'transform="rotate(-90 10 {(H - PAD) / 2:.0f})">{escape(y_label)}</text></svg>')


def _ticks(lo: float, hi: float, axis: str) -> list[str]:
    out = []
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        if axis == "x":
            x = PAD + (W - PAD - 8) * i / 4
            anchor = "end" if i == 4 else "middle"  # the last label inside the picture
            out.append(f'<text x="{x:.1f}" y="{H - PAD + 14}" text-anchor="{anchor}" font-size="10">{v:.3g}</text>')
        else:
            y = H - PAD - (H - PAD - 8) * i / 4
            out.append(f'<text x="{PAD - 3}" y="{y + 3:.1f}" text-anchor="end" font-size="10">{v:.3g}</text>')
    return out


def bars(counts: dict[str, int], title: str) -> str:
    """Vertical bars, one per key (class counts)."""
    n, top = max(len(counts), 1), max([*counts.values(), 1])
    width = (W - PAD - 8) / n
    body = []
    for i, (name, count) in enumerate(counts.items()):
        h = (H - PAD - 8) * count / top
        x = PAD + i * width + width * 0.15
        body.append(f'<rect x="{x:.1f}" y="{H - PAD - h:.1f}" width="{width * 0.7:.1f}" height="{h:.1f}" '
                    f'fill="{colour(name)}"><title>{escape(name)}: {count}</title></rect>'
                    f'<text x="{x + width * 0.35:.1f}" y="{H - PAD - h - 3:.1f}" text-anchor="middle" '
                    f'font-size="11">{count}</text>'
                    f'<text x="{x + width * 0.35:.1f}" y="{H - PAD + 14}" text-anchor="middle" '
                    f'font-size="11">{escape(name)}</text>')
    return _frame(body, title, "", "scans")


def histogram(values: list[float], title: str, fill: str, x_max: float, bins: int = 10) -> str:
    """Histogram of ``values`` over [0, x_max] (lesion percent)."""
    x_max = x_max if x_max > 0 else 1.0
    counts = [0] * bins
    for v in values:
        counts[min(int(v / x_max * bins), bins - 1)] += 1
    top = max([*counts, 1])
    width = (W - PAD - 8) / bins
    body = [f'<rect x="{PAD + i * width:.1f}" y="{H - PAD - (H - PAD - 8) * c / top:.1f}" width="{width - 1:.1f}" '
            f'height="{(H - PAD - 8) * c / top:.1f}" fill="{fill}"><title>{c} scan(s) in '
            f'{x_max * i / bins:.3g}–{x_max * (i + 1) / bins:.3g} %</title></rect>'
            for i, c in enumerate(counts) if c]
    return _frame(body + _ticks(0, x_max, "x") + _ticks(0, top, "y"), title, "lesion percent (total)", "scans")


def scatter(points: list[tuple[float, float, str, str]], title: str, x_label: str, y_label: str) -> str:
    """Points ``(x, y, class, label)`` on equal axes from 0 with the diagonal x = y."""
    top = max([max(x, y) for x, y, _, _ in points] + [1.0]) * 1.05
    sx = (W - PAD - 8) / top
    sy = (H - PAD - 8) / top
    body = [f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - 8}" y2="8" stroke="#ced4da" stroke-dasharray="4 3"/>']
    for x, y, cls, label in points:
        body.append(f'<circle cx="{PAD + x * sx:.1f}" cy="{H - PAD - y * sy:.1f}" r="4" fill="{colour(cls)}" '
                    f'fill-opacity="0.75"><title>{escape(label)}: left {x:.2f} %, right {y:.2f} %</title></circle>')
    return _frame(body + _ticks(0, top, "x") + _ticks(0, top, "y"), title, x_label, y_label)
