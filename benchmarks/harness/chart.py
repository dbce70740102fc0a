"""The results chart: one horizontal bar panel per load, vend's bars highlighted."""

from __future__ import annotations

from pathlib import Path

from harness.content import LOAD_LABELS
from harness.loads import LARGE_SIZE, Measurement, headline
from harness.peers import PEERS


def render_chart(path: Path, title: str, measurements: list[Measurement]) -> None:
    """Draws one horizontal bar panel per load (req/s or MiB/s, vend highlighted).

    Args:
        path: the PNG file to write.
        title: figure title.
        measurements: every measurement; failed ones are left out.

    Raises:
        OSError: when the file cannot be written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for scheme, prefix in (("http", ""), ("https", "TLS ")):
        for size, label in LOAD_LABELS:
            rows = [
                m
                for m in measurements
                if m.ok
                and m.probe.key == size
                and PEERS[m.peer].scheme == scheme
                and headline(m) is not None
            ]
            if rows:
                unit = "MiB/s" if size == LARGE_SIZE else "req/s"
                panels.append((f"{prefix}{label}: {unit}", rows))
    if not panels:
        return
    heights = [0.45 * len(rows) + 1.2 for _, rows in panels]
    figure, axes = plt.subplots(
        len(panels),
        1,
        figsize=(10, sum(heights)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for axis, (panel_title, rows) in zip(axes[:, 0], panels, strict=True):
        values = [headline(m) or 0.0 for m in rows]
        labels = [PEERS[m.peer].label for m in rows]
        colours = ["#d62728" if "vend" in m.peer else "#7f7f7f" for m in rows]
        bars = axis.barh(range(len(rows)), values, color=colours)
        axis.set_yticks(range(len(rows)), labels, fontsize=8)
        axis.invert_yaxis()
        axis.set_title(panel_title, fontsize=10, loc="left")
        axis.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=7, padding=3)
        axis.set_xlim(0, max(values) * 1.15 or 1)
        axis.tick_params(axis="x", labelsize=7)
    figure.suptitle(title, fontsize=11)
    # Room at the top for the title, which the first panel's title would otherwise cover.
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.4 / sum(heights)))
    figure.savefig(path, dpi=110)
    plt.close(figure)
