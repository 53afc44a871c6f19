"""Pictures of the tools' results as PNG files: the search's Pareto plot, the class-similarity heatmap,
the audit's top suspects and its precision-recall curve. matplotlib (the `examples` extra) is imported
only here, inside each function, and through its object-oriented API: no pyplot, no global figure state."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

__all__ = ["plot_class_similarity", "plot_precision_recall", "plot_search", "plot_suspects"]


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError as error:  # an optional dependency: say which extra brings it
        raise ImportError("the tools' plots need matplotlib: pip install 'hf_tinyvit[examples]'") from error
    return Figure(figsize=(width, height))


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_search(search, path) -> Path:
    """Two panels: parameters vs measured img/s (the frontier, the budget and the floor), and img/s vs
    proxy accuracy for the scored candidates (their Pareto front of speed and accuracy)."""
    from .search import pareto_front

    fig = _figure(11, 4.2)
    speed_ax, accuracy_ax = fig.subplots(1, 2)
    candidates = search.candidates
    params = np.array([c.cost.parameters / 1e6 for c in candidates])
    speed = np.array([c.cost.images_per_second for c in candidates])
    scored = np.array([c.feasible for c in candidates])
    front = search.frontier()
    best = search.best.index

    order = np.flatnonzero(front)[np.argsort(params[front])]
    speed_ax.plot(params[order], speed[order], "-", color="0.6", zorder=1, label="params / img/s frontier")
    speed_ax.scatter(params[~scored], speed[~scored], marker="x", color="tab:red", label="rejected (budget or floor)")
    points = speed_ax.scatter(
        params[scored], speed[scored], c=[100 * c.proxy_accuracy for c in candidates if c.feasible],
        cmap="viridis", edgecolor="k", zorder=2, label="scored (colour: proxy accuracy)",
    )  # fmt: skip
    fig.colorbar(points, ax=speed_ax, label="proxy accuracy (%)")
    speed_ax.scatter(params[best], speed[best], s=220, facecolor="none", edgecolor="tab:orange", linewidth=2,
                     label="best", zorder=3)  # fmt: skip
    speed_ax.axvline(search.settings["max_params"] / 1e6, color="tab:red", linestyle="--", linewidth=1)
    if search.settings["min_throughput"] > 0:
        speed_ax.axhline(search.settings["min_throughput"], color="tab:red", linestyle=":", linewidth=1)
    for c in candidates:
        speed_ax.annotate(str(c.index), (params[c.index], speed[c.index]), textcoords="offset points",
                          xytext=(4, 4), fontsize=7)  # fmt: skip
    speed_ax.set_xlabel("parameters (M)")
    speed_ax.set_ylabel(f"img/s (batch {search.settings['batch_size']}, {search.settings['device']})")
    speed_ax.set_title("candidates: budget (dashed), floor (dotted)")
    speed_ax.legend(fontsize=7, loc="best")
    speed_ax.grid(alpha=0.3)

    rows = np.flatnonzero(scored)
    accuracy = np.array([100 * candidates[i].proxy_accuracy for i in rows])
    accuracy_front = pareto_front(np.stack([speed[rows], accuracy], axis=1))
    ordered = rows[accuracy_front][np.argsort(speed[rows][accuracy_front])]
    accuracy_ax.plot(speed[ordered], [100 * candidates[i].proxy_accuracy for i in ordered], "-", color="0.6")
    accuracy_ax.scatter(speed[rows], accuracy, c=params[rows], cmap="plasma", edgecolor="k")
    for i, a in zip(rows, accuracy):
        accuracy_ax.annotate(f"{i} ({params[i]:.2f}M)", (speed[i], a), textcoords="offset points", xytext=(4, 4),
                             fontsize=7)  # fmt: skip
    accuracy_ax.set_xlabel("img/s")
    accuracy_ax.set_ylabel("proxy accuracy (%)")
    accuracy_ax.set_title("scored candidates: speed / accuracy Pareto front")
    accuracy_ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_class_similarity(similarity, path, *, annotate: bool | None = None) -> Path:
    """Heatmap of the class-by-class mean teacher distribution (log colour scale: the diagonal holds most
    of the mass, the neighbours live two orders of magnitude below)."""
    from matplotlib.colors import LogNorm

    matrix = similarity.matrix
    n = similarity.num_labels
    side = min(max(4.0, 0.45 * n + 2.0), 14.0)
    fig = _figure(side + 1.2, side)
    ax = fig.subplots()
    positive = matrix[np.isfinite(matrix) & (matrix > 0)]
    floor = max(float(positive.min()) if positive.size else 1e-6, 1e-6)
    image = ax.imshow(np.clip(matrix, floor, 1.0), norm=LogNorm(vmin=floor, vmax=1.0), cmap="magma")
    fig.colorbar(image, ax=ax, label="mean teacher probability")
    if n <= 30:
        names = [similarity.name(c) for c in range(n)]
        ax.set_xticks(range(n), names)
        ax.set_yticks(range(n), names)
    if annotate if annotate is not None else n <= 12:
        for r in range(n):
            for c in range(n):
                if np.isfinite(matrix[r, c]):
                    colour = "black" if matrix[r, c] > 0.1 else "white"
                    ax.text(c, r, f"{100 * matrix[r, c]:.1f}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_xlabel("teacher's class")
    ax.set_ylabel(f"class of the image ({similarity.grouped_by})")
    ax.set_title("mean teacher distribution per class (%)")
    return _save(fig, path)


def plot_suspects(audit, dataset, path, *, count: int = 16, wrong_ids: Iterable[int] | None = None,
                  image_column: str = "image") -> Path:  # fmt: skip
    """A grid of the top suspects' images titled `label -> teacher class (probability)`; with `wrong_ids`
    (known wrong labels) a title is green for a caught wrong label and red for a false alarm."""
    from ..datasets import image_to_tensor

    ids = audit.suspect_ids()[:count]
    columns = min(8, max(len(ids), 1))
    rows = max(1, -(-len(ids) // columns))
    fig = _figure(1.5 * columns, 2.1 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    wrong = None if wrong_ids is None else set(int(i) for i in wrong_ids)
    table = audit.table(ids) if len(ids) else None
    for ax in axes:
        ax.axis("off")
    for ax, row in zip(axes, table if table is not None else []):
        pixels = image_to_tensor(dataset[int(row["sample_id"])][image_column]).permute(1, 2, 0).numpy()
        ax.imshow(pixels, interpolation="nearest")
        colour = "black" if wrong is None else ("tab:green" if row["sample_id"] in wrong else "tab:red")
        ax.set_title(
            f"#{row['sample_id']}: {row['label_name']} -> {row['teacher_class_name']}\n"
            f"teacher {100 * row['teacher_probability']:.0f}%",
            fontsize=8, color=colour,
        )  # fmt: skip
    caption = "label -> teacher's class (its mean probability)"
    if wrong is not None:
        caption += "; green: the label was wrong, red: the label was right"
    fig.suptitle(caption, fontsize=9)
    return _save(fig, path)


def plot_precision_recall(curve: dict, path, *, operating_point: dict | None = None, title: str = "") -> Path:
    """The audit's precision-recall curve as its probability threshold sweeps, with the default
    setting's point when given (`{"precision", "recall", "threshold"}`)."""
    fig = _figure(5, 4.2)
    ax = fig.subplots()
    ax.step(curve["recall"], curve["precision"], where="post", color="tab:blue", label="threshold sweep")
    if operating_point is not None:
        ax.scatter([operating_point["recall"]], [operating_point["precision"]], s=80, color="tab:orange", zorder=3,
                   label=f"threshold {operating_point['threshold']:g}: precision {100 * operating_point['precision']:.1f}%, "
                   f"recall {100 * operating_point['recall']:.1f}%")  # fmt: skip
    ax.set_xlabel("recall (wrong labels found)")
    ax.set_ylabel("precision (flagged labels that were wrong)")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title or "hard-sample audit against known wrong labels", fontsize=9)
    return _save(fig, path)
