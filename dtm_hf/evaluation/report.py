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


def plot_results(losses: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models, columns = list(losses), list(next(iter(losses.values())))
    x = np.arange(len(columns))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(columns)), 4.5))
    for i, model in enumerate(models):
        ax.bar(x + i * width - 0.4 + width / 2, [losses[model][c] for c in columns], width, label=model)
    values = [v for scores in losses.values() for v in scores.values()]
    span = max(values) - min(values) or 1.0
    ax.set_ylim(min(values) - 0.15 * span, max(values) + 0.05 * span)  # the differences, not the distance to 0
    ax.set_xticks(x, columns)
    ax.set_ylabel("held-out loss on assistant tokens (lower is better)")
    ax.legend(fontsize="small", bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
