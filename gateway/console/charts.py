"""Small charts as inline SVG, drawn on the server: no script, no stylesheet beyond the console's own (the console's
Content-Security-Policy allows neither inline styles nor scripts, so colours are SVG attributes and CSS classes)."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT, PAD = 320, 90, 16


def bars(title: str, labels: Sequence[str], values: Sequence[float | None], unit: str = "") -> Markup:
    """A bar per value (None: no bar), the largest value as the scale, each bar titled with its label and value."""
    known = [value for value in values if value is not None]
    top = max(known, default=0.0) or 1.0
    step = (WIDTH - 2) / max(len(values), 1)
    parts = [f'<svg class="chart" role="img" width="{WIDTH}" height="{HEIGHT + PAD}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT + PAD}" aria-label="{escape(title)}">',
             f"<title>{escape(title)}</title>",
             f'<text x="0" y="10" font-size="11" fill="#1d2430">{escape(title)}</text>',
             f'<line x1="0" y1="{HEIGHT}" x2="{WIDTH}" y2="{HEIGHT}" stroke="#99a3b1" stroke-width="1"/>']
    for index, (label, value) in enumerate(zip(labels, values, strict=True)):
        if value is None:
            continue
        height = max(1.0, value / top * (HEIGHT - 18)) if value else 0.0
        x = 1 + index * step
        parts.append(f'<rect x="{x:.1f}" y="{HEIGHT - height:.1f}" width="{max(step - 1, 1):.1f}" '
                     f'height="{height:.1f}" fill="#3d7bd9"><title>{escape(label)}: '
                     f"{escape(_number(value))}{escape(unit)}</title></rect>")
    parts.append(f'<text x="0" y="{HEIGHT + PAD - 3}" font-size="10" fill="#556">{escape(labels[0] if labels else "")}'
                 f'</text><text x="{WIDTH}" y="{HEIGHT + PAD - 3}" font-size="10" fill="#556" text-anchor="end">'
                 f'max {escape(_number(max(known, default=0.0)))}{escape(unit)}</text></svg>')
    return Markup("".join(parts))


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"
