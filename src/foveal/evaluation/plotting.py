"""Figures without pyplot's global state: matplotlib's object API on the Agg canvas, safe in any process (no
display, no backend switch, nothing to close)."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def subplots(nrows: int = 1, ncols: int = 1, *, figsize=None, layout=None, squeeze: bool = True, **kwargs):
    """(figure, axes) as pyplot.subplots gives them."""
    fig = Figure(figsize=figsize, layout=layout)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze, **kwargs)


def figure_pixels(fig: Figure) -> np.ndarray:
    """The rendered figure as uint8 [H, W, 3]."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
