"""PNG pictures of training and tuning, for MLflow artifacts and Dagster markdown metadata.

matplotlib runs headless (Agg); every function writes a PNG file and returns its path.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def tuning_trials(numbers: Sequence[int], ndcg: Sequence[float], pruned: Sequence[bool],
                  regularization: Sequence[float], alpha: Sequence[float], factors: Sequence[int], path: Path,
                  title: str = "validation NDCG@10") -> Path:
    """A search's trials: NDCG by trial number with the best so far, and where they lay in regularization x alpha
    (log scales, colour = NDCG, size = factors); pruned trials hollow, the best one outlined in red."""
    ndcg, pruned = np.asarray(ndcg, dtype=float), np.asarray(pruned, dtype=bool)
    done = ~pruned
    best = int(np.argmax(np.where(done, ndcg, -np.inf)))
    fig, (history, space) = plt.subplots(1, 2, figsize=(11, 4))
    history.scatter(np.asarray(numbers)[done], ndcg[done], label="completed")
    history.scatter(np.asarray(numbers)[pruned], ndcg[pruned], facecolors="none", edgecolors="grey",
                    label="pruned (value where stopped)")
    history.plot(numbers, np.maximum.accumulate(np.where(done, ndcg, -np.inf)), color="red", label="best so far")
    history.set_xlabel("trial")
    history.set_ylabel("NDCG@10")
    history.legend(fontsize=8)
    history.grid(alpha=0.3)
    sizes = 20 + 60 * np.asarray(factors, dtype=float) / max(factors)
    image = space.scatter(np.asarray(regularization)[done], np.asarray(alpha)[done], c=ndcg[done],
                          s=sizes[done], cmap="viridis")
    space.scatter(np.asarray(regularization)[pruned], np.asarray(alpha)[pruned], s=sizes[pruned],
                  facecolors="none", edgecolors="grey")
    space.scatter([regularization[best]], [alpha[best]], s=3 * sizes[best], facecolors="none", edgecolors="red",
                  linewidths=2)
    space.set_xscale("log")
    space.set_yscale("log")
    space.set_xlabel("regularization")
    space.set_ylabel("alpha")
    fig.colorbar(image, ax=space)
    fig.suptitle(title)
    return _save(fig, path)


def loss_curve(loss_history: Sequence[float], path: Path, title: str = "training loss") -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(loss_history) + 1), loss_history, marker="o")
    ax.set_xlabel("iteration")
    ax.set_ylabel("normalised objective")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def ndcg_history(labels: Sequence[str], series: dict[str, Sequence[float]], path: Path,
                 title: str = "NDCG@10 over the last retrains") -> Path:
    """One line per model role (challenger, champion, popularity) over successive retrains."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, values in series.items():
        ax.plot(range(len(values)), values, marker="o", label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("NDCG@10")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def markdown_image(path: Path, alt: str) -> str:
    """The PNG inlined as a data URI, so Dagster's markdown metadata shows it without a file server."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"![{alt}](data:image/png;base64,{data})"
