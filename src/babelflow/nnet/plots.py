"""Training curves per task (PNG, matplotlib; DVC renders the TSVs itself)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def plot_curves(train_log: Path, diagnostics: Path, out_png: Path) -> None:
    """One column per task: training objective per step (smoothed) and per-epoch accuracy."""
    steps = pd.read_csv(train_log, sep="\t")
    diag = pd.read_csv(diagnostics, sep="\t")
    tasks = list(dict.fromkeys(diag["task"]))
    fig, axes = plt.subplots(2, len(tasks), figsize=(3.2 * len(tasks), 5.5), squeeze=False)
    for j, task in enumerate(tasks):
        s = steps[steps["task"] == task]
        ax = axes[0, j]
        ax.plot(s["step"], s["objective"].rolling(10, min_periods=1).mean(), lw=1)
        ax.set_title(task)
        ax.set_xlabel("step")
        if j == 0:
            ax.set_ylabel("train log-likelihood / frame")
        ax = axes[1, j]
        for part, style in (("train_diagnostic", "--"), ("valid", "-")):
            dd = diag[(diag["task"] == task) & (diag["set"] == part)]
            ax.plot(dd["epoch"], dd["accuracy"], style, marker="o", label=part)
        dd = diag[(diag["task"] == task) & (diag["set"] == "valid")]
        ax.plot(dd["epoch"], dd["baseline_accuracy"], ":", color="gray", label="majority")
        ax.set_ylim(0, 1)
        ax.set_xlabel("epoch")
        if j == 0:
            ax.set_ylabel("accuracy")
            ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(out_png)


def write_curve_tables(diagnostics: Path, out_dir: Path) -> None:
    """``<task>.tsv`` per task, one row per epoch (what ``dvc plots`` draws, one line per file)."""
    from ..io import atomic_dir

    diag = pd.read_csv(diagnostics, sep="\t")
    wide = diag.pivot_table(index=["task", "epoch"], columns="set", values=["accuracy", "objective"])
    wide.columns = [f"{part.replace('_diagnostic', '')}_{what}" for what, part in wide.columns]
    base = diag[diag["set"] == "valid"].set_index(["task", "epoch"])["baseline_accuracy"]
    wide = wide.join(base).reset_index()
    with atomic_dir(out_dir) as tmp:
        for task, rows in wide.groupby("task", sort=False):
            rows.drop(columns="task").to_csv(tmp / f"{task}.tsv", sep="\t", index=False, float_format="%.5f")
