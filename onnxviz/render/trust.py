"""Figures for the trust metrics: deletion/insertion curves and the randomization test.

Like ``figures``, built on ``Figure`` + Agg (no pyplot state); each returns the Figure.
"""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from .figures import new_figure


def curves_figure(curves: Mapping[str, object], title: Optional[str] = None, ax=None, figsize=(4.2, 3.2)):
    """Mean score against the fraction of pixels changed, one line per method (``Curve`` values)."""
    fig = ax.figure if ax is not None else new_figure(figsize)
    ax = ax if ax is not None else fig.add_subplot()
    metric = None
    for name, c in curves.items():
        metric = c.metric
        ax.plot(c.fractions, c.scores.mean(axis=0), label=f"{name} (AUC {c.auc.mean():.3f})")
    better = {"deletion": "lower AUC is better", "insertion": "higher AUC is better"}.get(metric, "")
    ax.set_xlabel(f"fraction of pixels {'deleted' if metric == 'deletion' else 'inserted'}")
    score = next(iter(curves.values())).score if curves else "prob"
    ax.set_ylabel("probability of the class" if score == "prob" else "logit of the class")
    ax.set_title(title or f"{(metric or '').capitalize()} ({better})", fontsize=10)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def sanity_figure(results: Mapping[str, object], threshold: float = 0.5, ax=None, figsize=(5.0, 3.4)):
    """Mean rank correlation of |map| with the original against layers randomized, one line per method."""
    fig = ax.figure if ax is not None else new_figure(figsize)
    ax = ax if ax is not None else fig.add_subplot()
    width = 0
    for name, s in results.items():
        y = np.concatenate([[1.0], s.spearman_abs.mean(axis=1)])
        ax.plot(np.arange(len(y)), y, marker="o", markersize=3, label=name)
        width = max(width, len(y) - 1)
    ax.axhline(threshold, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("weighted layers randomized (from the output back)")
    ax.set_ylabel("Spearman of |map| with the original")
    ax.set_xlim(0, max(width, 1))
    ax.set_ylim(min(-0.2, ax.get_ylim()[0]), 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Model-parameter randomization (lower is better)", fontsize=10)
    return fig
