"""One figure style for every recipe; figures saved as PNG and PDF."""
from __future__ import annotations

from pathlib import Path


def sns_setup():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind")
    return sns, plt


def plotted_data(fig) -> list[dict]:
    """The numbers a figure shows: each axes' title, lines (x, y) and bar heights, for the sidecar file."""
    import numpy as np

    def floats(values):
        return [None if not np.isfinite(v) else float(v) for v in np.asarray(values, dtype=float).ravel()]
    from matplotlib.colors import to_hex

    def name(line, legend):  # seaborn leaves lines unlabelled ("_child0"): name them by their legend entry
        label = line.get_label()
        return legend.get(to_hex(line.get_color()), label) if label.startswith("_") else label
    out = []
    for ax in fig.axes:
        legend = {}
        if ax.get_legend() is not None:
            for handle, text in zip(ax.get_legend().legend_handles, ax.get_legend().get_texts()):
                if hasattr(handle, "get_color"):
                    legend.setdefault(to_hex(handle.get_color()), text.get_text())
        lines = [{"label": name(line, legend), "x": floats(line.get_xdata()), "y": floats(line.get_ydata())}
                 for line in ax.get_lines() if len(line.get_xdata())]
        bars = [float(p.get_height()) for p in ax.patches if hasattr(p, "get_height")]
        images = [floats(im.get_array().filled(np.nan) if hasattr(im.get_array(), "filled") else im.get_array())
                  for im in ax.collections if getattr(im, "get_array", lambda: None)() is not None]
        out.append({"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(), "lines": lines,
                    "bars": bars, "arrays": images})
    return out


def save(fig, stem: Path) -> list[Path]:
    """PNG and PDF, plus <stem>.data.json with the plotted numbers (the data behind the figure)."""
    import json

    import matplotlib.pyplot as plt
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(paths[0], dpi=130, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight", metadata={"CreationDate": None})
    stem.with_suffix(".data.json").write_text(json.dumps(plotted_data(fig)))
    plt.close(fig)
    return paths
