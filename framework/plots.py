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


def save(fig, stem: Path) -> list[Path]:
    import matplotlib.pyplot as plt
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(paths[0], dpi=130, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths
