"""Colours for categories without an order (sources, clusters): each its own hue, with no paired light and dark
shades (as tab20 has) that would suggest links between categories that are not there."""

import numpy as np

# Tableau 10, then strong hues from Trubetskoy's "20 distinct colours" that no Tableau 10 colour comes close to
# (none of its pale ones, which small points on white would lose).
DISTINCT = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf", "#000075", "#800000", "#f032e6", "#469990", "#ffe119", "#000000"]


def distinct_colors(n: int) -> list:
    """`n` colours: the DISTINCT list while it lasts, else `n` evenly spaced along the turbo colour map."""
    if n <= len(DISTINCT):
        return DISTINCT[:n]
    import matplotlib

    return [tuple(c) for c in matplotlib.colormaps["turbo"](np.linspace(0.03, 0.97, n))]


def text_color(color) -> str:
    """Black or white, whichever reads better on `color`."""
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(color)
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"
