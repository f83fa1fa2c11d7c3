"""Small bar-chart figures for TensorBoard's Images tab: the data stage's statistics and the before/after table.

Drawn with Pillow, which tensorboard itself depends on, so figures need nothing beyond thinksafe's dependencies;
matplotlib would be the usual choice but is a large dependency for a few bar charts. A figure is a list of
panels stacked top to bottom, each a bar chart with its own scale; the result is an ``(H, W, 3)`` uint8 array
for ``SummaryWriter.add_image(..., dataformats="HWC")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: one colour per series (before / after, or a single series)
COLOURS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52")
WIDTH = 720
PANEL_HEIGHT = 260


@dataclass
class Panel:
    """A bar chart: ``categories`` on the x axis, one bar per series in each.

    Args:
        title: above the chart.
        categories: x-axis labels.
        series: name -> one value per category (None: no bar).
        fmt: how a bar's value is written above it.
        ymax: top of the y axis (None: the largest value).
    """

    title: str
    categories: Sequence[str]
    series: dict[str, Sequence[float | None]] = field(default_factory=dict)
    fmt: str = "{:.3g}"
    ymax: float | None = None


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _draw_panel(draw, panel: Panel, top: int) -> None:
    title_font, font = _font(16), _font(12)
    left, right, bottom = 56, WIDTH - 16, top + PANEL_HEIGHT - 48
    chart_top = top + 60
    draw.text((left, top + 8), panel.title, fill="black", font=title_font)
    names = list(panel.series)
    for i, name in enumerate(names if len(names) > 1 else []):  # legend
        x = right - 110 * (len(names) - i)
        draw.rectangle((x, top + 28, x + 10, top + 38), fill=COLOURS[i % len(COLOURS)])
        draw.text((x + 14, top + 26), name, fill="black", font=font)
    values = [v for vs in panel.series.values() for v in vs if v is not None]
    ymax = panel.ymax if panel.ymax is not None else max(values, default=0.0)
    ymax = ymax if ymax > 0 else 1.0
    draw.line((left, chart_top, left, bottom), fill="#888888")
    draw.line((left, bottom, right, bottom), fill="#888888")
    for frac in (0.0, 0.5, 1.0):
        y = bottom - frac * (bottom - chart_top)
        draw.text((4, y - 7), panel.fmt.format(frac * ymax), fill="#555555", font=font)
        draw.line((left - 3, y, left, y), fill="#888888")
    if not panel.categories:
        draw.text((left + 10, (chart_top + bottom) // 2), "nothing to show", fill="#555555", font=font)
        return
    slot = (right - left) / len(panel.categories)
    bar = min(60.0, 0.8 * slot / max(len(names), 1))
    for c, category in enumerate(panel.categories):
        x0 = left + c * slot + (slot - bar * len(names)) / 2
        for s, name in enumerate(names):
            value = panel.series[name][c]
            if value is None:
                continue
            height = (bottom - chart_top) * min(max(value / ymax, 0.0), 1.0)
            x = x0 + s * bar
            draw.rectangle((x, bottom - height, x + bar - 2, bottom), fill=COLOURS[s % len(COLOURS)])
            draw.text((x, bottom - height - 14), panel.fmt.format(value), fill="black", font=font)
        label = category if len(category) * 7 <= slot else category[: max(int(slot // 7) - 1, 1)] + "…"
        width = draw.textlength(label, font=font)
        draw.text((left + c * slot + (slot - width) / 2, bottom + 4), label, fill="black", font=font)


def figure(panels: Sequence[Panel]) -> np.ndarray:
    """The panels stacked into one RGB image, ``(H, W, 3)`` uint8."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (WIDTH, PANEL_HEIGHT * max(len(panels), 1)), "white")
    draw = ImageDraw.Draw(image)
    for i, panel in enumerate(panels):
        _draw_panel(draw, panel, i * PANEL_HEIGHT)
    return np.asarray(image)


def histogram_panel(title: str, values: Sequence[float], bins: int = 12) -> Panel:
    """A histogram of ``values`` as a bar panel (bin ranges as categories)."""
    if not len(values):
        return Panel(title, [], {})
    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=min(bins, max(len(set(values)), 1)))
    categories = [f"{edges[i]:.0f}-{edges[i + 1]:.0f}" for i in range(len(counts))]
    return Panel(title, categories, {"rows": [float(c) for c in counts]}, fmt="{:.0f}")


def data_stage_figure(stats: dict, kept_lengths: Sequence[int]) -> np.ndarray:
    """The data stage at a glance: acceptance (think block closed, safe, kept) by label, reject reasons, and the
    kept responses' lengths in tokens."""
    per_label = stats.get("per_label", {})
    labels = list(per_label)
    acceptance = Panel(
        "data stage: rates by label",
        labels,
        {
            key.replace("_rate", ""): [per_label[lab].get(key) for lab in labels]
            for key in ("format_ok_rate", "safe_rate", "acceptance_rate")
        },
        fmt="{:.2f}",
        ymax=1.0,
    )
    reasons = stats.get("reject_reasons", {})
    rejected = Panel(
        "rejected samples by reason", list(reasons), {"rows": [float(v) for v in reasons.values()]}, "{:.0f}"
    )
    lengths = histogram_panel("kept responses: length in tokens", list(kept_lengths))
    return figure([acceptance, rejected, lengths])


def before_after_figure(report: dict, metrics: Sequence[str]) -> np.ndarray:
    """A before/after report (``{metric: {"before": x, "after": y}}``) as bars before and after: the rates on
    a 0-1 scale in one panel, the in-distribution NLL (nats per token) in its own."""
    shown = [m for m in metrics if report[m].get("before") is not None or report[m].get("after") is not None]
    panels = []
    for title, names, ymax in (
        ("before / after training: rates", [m for m in shown if m != "in_distribution_nll"], 1.0),
        (
            "in-distribution NLL (nats/token, lower: more in distribution)",
            [m for m in shown if m == "in_distribution_nll"],
            None,
        ),
    ):
        if names:
            series = {when: [report[m].get(when) for m in names] for when in ("before", "after")}
            panels.append(Panel(title, names, series, fmt="{:.3f}", ymax=ymax))
    return figure(panels)
