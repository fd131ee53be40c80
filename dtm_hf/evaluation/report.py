"""The evaluation's results as a Markdown table (the best per column in bold) and a chart."""

import math
from pathlib import Path


def results_table(losses: dict[str, dict], counts: dict[str, dict], extra: dict[str, dict],
                  long_rows: dict[str, dict]) -> str:
    """Markdown: models x (clusters, overall, lm-eval metrics), each loss with the rows behind it; the best (lowest
    loss, highest metric) in bold; then the rows each model could not score whole."""
    models = list(losses)
    columns = [(c, "min") for c in next(iter(losses.values()))]
    columns += sorted({(k, "max") for scores in extra.values() for k in scores})
    cells = {m: {**losses[m], **extra.get(m, {})} for m in models}
    best = {c: (min if how == "min" else max)(v for m in models if (v := cells[m].get(c)) is not None)
            if any(cells[m].get(c) is not None for m in models) else None for c, how in columns}

    def cell(m, c):
        value = cells[m].get(c)
        text = "-" if value is None else f"**{value:.4f}**" if value == best[c] else f"{value:.4f}"
        return f"{text} ({counts[m][c]})" if c in counts[m] else text

    lines = ["| model | " + " | ".join(c for c, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {m} | " + " | ".join(cell(m, c) for c, _ in columns) + " |" for m in models]
    lines += ["", "In parentheses: the held-out rows behind each loss."]
    noted = [f"- {m}: " + "; ".join(f"{c}: " + ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in found.items())
                                    for c, found in long_rows[m].items()) for m in models if long_rows.get(m)]
    if noted:
        lines += ["", "Rows longer than --max_length (a prompt that fills it is skipped, a reply that does not fit is "
                      "cut):", *noted]
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
        heights = [math.nan if losses[model][c] is None else losses[model][c] for c in columns]
        ax.bar(x + i * width - 0.4 + width / 2, heights, width, label=model)
    values = [v for scores in losses.values() for v in scores.values() if v is not None]
    span = max(values) - min(values) or 1.0
    ax.set_ylim(min(values) - 0.15 * span, max(values) + 0.05 * span)  # the differences, not the distance to 0
    ax.set_xticks(x, columns)
    ax.set_ylabel("held-out loss on assistant tokens (lower is better)")
    ax.legend(fontsize="small", bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
