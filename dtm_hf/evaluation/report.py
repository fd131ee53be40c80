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
    """Grouped bars of held-out loss per column on an axis from zero, so that bars compare by their heights.
    The reference model (`base` when there is one, else the first) is labelled with its loss, every other
    model with its change from the reference: green where lower, red where higher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..data.palette import distinct_colors

    models, columns = list(losses), list(next(iter(losses.values())))
    reference = "base" if "base" in losses else models[0]
    x = np.arange(len(columns))
    width = 0.8 / len(models)
    crowded = len(models) * len(columns) > 12
    fig, ax = plt.subplots(figsize=(min(16, max(7, 0.25 * len(models) * len(columns) + 3)), 5))
    for i, (model, color) in enumerate(zip(models, distinct_colors(len(models)), strict=True)):
        values = [math.nan if losses[model][c] is None else losses[model][c] for c in columns]  # None: no rows
        bars = ax.bar(x + i * width - 0.4 + width / 2, values, width, label=model, color=color)
        if model == reference:
            ax.bar_label(bars, labels=["" if math.isnan(v) else f"{v:.3f}" for v in values], padding=2, fontsize=7,
                         rotation=90 if crowded else 0)
            continue
        for bar, value, column in zip(bars, values, columns, strict=True):
            if math.isnan(value) or losses[reference][column] is None:
                continue
            delta = round(value - losses[reference][column], 3) + 0.0  # + 0.0: no -0.000
            ax.annotate(f"{delta:+.3f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=7,
                        rotation=90 if crowded else 0,
                        color="tab:green" if delta < 0 else "tab:red" if delta > 0 else "0.4")
    top = max(v for scores in losses.values() for v in scores.values() if v is not None)
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
