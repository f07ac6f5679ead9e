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


def ndcg_heatmap(rows: Sequence, cols: Sequence, grid: np.ndarray, row_label: str, col_label: str,
                 path: Path, title: str = "validation NDCG@10") -> Path:
    """Heatmap of NDCG over two hyperparameters (best over the others), best cell outlined."""
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 2.5, 0.8 * len(rows) + 2))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.set_title(title)
    finite = np.where(np.isfinite(grid), grid, -np.inf)
    for (r, c), value in np.ndenumerate(grid):
        if np.isfinite(value):
            ax.text(c, r, f"{value:.3f}", ha="center", va="center", color="white", fontsize=8)
    best = np.unravel_index(np.argmax(finite), grid.shape)
    ax.add_patch(plt.Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    fig.colorbar(image, ax=ax)
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
