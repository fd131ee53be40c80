"""The evaluation's results as a Markdown table (the best per column in bold) and a chart."""

import math
from pathlib import Path


def results_table(losses: dict[str, dict[str, float]], extra: dict[str, dict[str, float]]) -> str:
    """Markdown: models x (clusters, overall, lm-eval metrics); the best (lowest loss, highest metric) in bold."""
    models = list(losses)
    columns = [(c, "min") for c in next(iter(losses.values()))]
    columns += sorted({(k, "max") for scores in extra.values() for k in scores})
    cells = {m: {**losses[m], **extra.get(m, {})} for m in models}
    best = {c: (min if how == "min" else max)(cells[m].get(c, math.nan) for m in models if c in cells[m])
            for c, how in columns}
    lines = ["| model | " + " | ".join(c for c, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for m in models:
        row = [f"**{cells[m][c]:.4f}**" if cells[m].get(c) == best[c] else
               (f"{cells[m][c]:.4f}" if c in cells[m] else "-") for c, _ in columns]
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_results(losses: dict[str, dict[str, float]], path: Path, reference: str | None = None) -> None:
    """Grouped bars of held-out loss per column on an axis from zero, so that bars compare by their heights.
    The reference model (`base` when there is one, else the first) is labelled with its loss, every other
    model with its change from the reference: green where lower, red where higher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..data.palette import distinct_colors

    models, columns = list(losses), list(next(iter(losses.values())))
    reference = reference or ("base" if "base" in losses else models[0])
    x = np.arange(len(columns))
    width = 0.8 / len(models)
    crowded = len(models) * len(columns) > 12
    fig, ax = plt.subplots(figsize=(min(16, max(7, 0.25 * len(models) * len(columns) + 3)), 5))
    for i, (model, color) in enumerate(zip(models, distinct_colors(len(models)), strict=True)):
        values = [losses[model][c] for c in columns]
        bars = ax.bar(x + i * width - 0.4 + width / 2, values, width, label=model, color=color)
        if model == reference:
            ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], padding=2, fontsize=7,
                         rotation=90 if crowded else 0)
            continue
        deltas = [round(v - losses[reference][c], 3) + 0.0 for v, c in zip(values, columns, strict=True)]  # no -0.000
        for bar, delta in zip(bars, deltas, strict=True):
            ax.annotate(f"{delta:+.3f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=7,
                        rotation=90 if crowded else 0,
                        color="tab:green" if delta < 0 else "tab:red" if delta > 0 else "0.4")
    top = max(v for scores in losses.values() for v in scores.values())
    ax.set_ylim(0, top * (1.3 if crowded else 1.15))
    ax.set_xticks(x, columns)
    ax.set_ylabel("held-out loss on assistant tokens (lower is better)")
    ax.set_title(f"Held-out loss (above the bars: {reference}'s loss, and each other model's change from it)",
                 fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize="small", bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
