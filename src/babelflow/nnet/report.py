"""Evaluation report of a task model on its held-out (valid) egs: accuracy, per-pdf accuracy
(frame tasks) or a confusion matrix (utterance tasks), as files DVC understands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..egs.reader import EgsDir
from ..io import atomic_open, write_text
from .batching import BATCH_FRAMES, length_batches, resolve_device
from .modeldir import ModelDir


def _predictions(model, egs: EgsDir, part: str = "valid", batch_frames: int = BATCH_FRAMES):
    """(target, predicted, weight) arrays over every output frame / utterance of ``part``; egs
    sorted by length in batches of up to ``batch_frames`` input frames, on the model's device."""
    tgt, pred, wts = [], [], []
    dev = next(model.parameters()).device
    context = model.left_context + model.right_context
    with torch.no_grad():
        for arch in egs.archives(part):
            for b in length_batches(arch.index["n"], context, batch_frames, same_length=egs.kind == "frame"):
                ids = np.sort(b)
                x, n = arch.inputs_padded(ids, model.left_context, model.right_context)
                iv = torch.from_numpy(arch.ivector[ids]).to(dev) if arch.ivector is not None else None
                if egs.kind == "frame":
                    logp = model(torch.from_numpy(x).to(dev), 0, iv)
                    pdf, w = arch.frame_targets(ids)
                    keep = pdf >= 0
                    tgt.append(pdf[keep]), pred.append(logp.argmax(-1).cpu().numpy()[keep]), wts.append(w[keep])
                else:
                    frames = torch.arange(x.shape[1] - context, device=dev)
                    mask = frames[None, :] < torch.from_numpy(n).to(dev)[:, None]
                    logp = model(torch.from_numpy(x).to(dev), 0, iv, mask)
                    tgt.append(arch.index["label"][ids])
                    pred.append(logp.argmax(-1).cpu().numpy())
                    wts.append(np.ones(len(ids)))
    if not tgt:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    return np.concatenate(tgt), np.concatenate(pred), np.concatenate(wts)


def evaluate_task_model(model_dir: str | Path, out_dir: str | Path | None = None, extra: dict | None = None,
                        batch_frames: int = BATCH_FRAMES, device: str = "auto") -> dict:
    """Write ``eval/metrics.json`` (+ per_pdf.tsv, or confusion.tsv/.png) for a task model; ``extra``
    metrics (e.g. the phone accuracy against true alignments) go into the same file."""
    import pandas as pd

    md = ModelDir(model_dir)
    model, blob = md.load()
    egs = EgsDir(blob["egs_dir"])
    out = Path(out_dir or md.eval_dir)
    tgt, pred, w = _predictions(model.to(resolve_device(device)), egs, batch_frames=batch_frames)
    correct = (tgt == pred).astype(float)
    c = blob["num_outputs"]
    counts = np.bincount(tgt, weights=w, minlength=c)
    train_targets = (np.concatenate([a.labels["pdf"][a.labels["pdf"] >= 0] for a in egs.archives("train")])
                     if egs.kind == "frame" else np.concatenate([a.index["label"] for a in egs.archives("train")]))
    majority = int(np.argmax(np.bincount(train_targets, minlength=c)))
    metrics = {"valid_accuracy": float((correct * w).sum() / max(w.sum(), 1e-12)),
               "baseline_accuracy": float(counts[majority] / max(w.sum(), 1e-12)),
               "valid_frames" if egs.kind == "frame" else "valid_utterances": float(w.sum()),
               "valid_by": egs.info.get("valid_by", "utterance")}
    if "num_valid_speakers" in egs.info:  # held-out speakers: how many the valid figures are over
        metrics["valid_speakers"] = int(egs.info["num_valid_speakers"])
    if egs.kind == "frame":
        hits = np.bincount(tgt, weights=w * correct, minlength=c)
        accuracy = np.where(counts > 0, hits / np.maximum(counts, 1e-12), np.nan)
        table = pd.DataFrame({"pdf": np.arange(c), "frames": counts, "accuracy": accuracy})
        with atomic_open(out / "per_pdf.tsv", "w") as f:
            table.to_csv(f, sep="\t", index=False, float_format="%.4f")
    else:
        names = blob["labels"] or [str(i) for i in range(c)]
        conf = np.zeros((c, c), int)
        np.add.at(conf, (tgt, pred), 1)
        with atomic_open(out / "confusion.tsv", "w") as f:
            pd.DataFrame(conf, index=pd.Index(names, name="true"), columns=names).to_csv(f, sep="\t")
        _plot_confusion(conf, names, blob["task"], out / "confusion.png")
        rows = [{"actual": names[t], "predicted": names[p]} for t, p in zip(tgt, pred)]
        write_text(out / "confusion.json", json.dumps(rows) + "\n")  # DVC's confusion plot template input
    metrics.update(extra or {})
    write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def _plot_confusion(conf: np.ndarray, names: list[str], task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * len(names), 1.0 + 0.45 * len(names)))
    ax.imshow(conf, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for (i, j), v in np.ndenumerate(conf):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="black" if v < conf.max() / 2 else "white")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{task}: valid")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def collect_metrics(model_dirs: list[str | Path], out: str | Path) -> dict:
    """One metrics.json over all task models, keyed by task (what `dvc metrics show` lists)."""
    allm = {}
    for d in model_dirs:
        md = ModelDir(d)
        allm[md.path.name] = md.metrics
    write_text(out, json.dumps(allm, indent=2) + "\n")
    return allm
