"""Per-task models (Kaldi stage 12): split and priors.

A task model dir (:class:`.modeldir.ModelDir`, ``exp/models/<task>/``) is self-contained,
like ``exp/<lang>/`` after ``nnet3-am-init`` + ``adjust_priors.sh``: the trunk plus that
task's head renamed ``output``, everything inference needs to reproduce the training
features (feature type and Kaldi conf, ``cmvn_opts``, left/right context, i-vector dim), the
output labels (``num_pdfs`` or the class names) and, for frame tasks, the TransitionModel
(``trans.mdl``) and the decision tree (``tree``) of the task's alignment dir. ``model.pt``
holds tensors and plain data (:mod:`.checkpoint`: no code is unpickled when it is loaded).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..egs.reader import EgsDir
from ..errors import BabelflowError
from ..io import atomic_open, write_text
from ..kaldi.table import looks_like_rspecifier
from .batching import BATCH_FRAMES, length_batches, resolve_device
from .checkpoint import load_model, save_task_model, task_meta
from .model import MultiTaskModel
from .modeldir import ModelDir

log = logging.getLogger("babelflow")
_TREE_MAGIC = (b"\0BContextDependency", b"ContextDependency")  # Kaldi binary / text ContextDependency


def split_model(multitask: str | Path, task: str, out_dir: str | Path, feats_dir: str | Path | None = None,
                ali: str | None = None) -> dict:
    """Write ``out_dir`` for ``task`` from the trained multi-task model (no priors yet).

    ``ali``: frame tasks, the task's Kaldi alignment dir, whose ``final.mdl`` TransitionModel
    becomes ``trans.mdl`` and whose ``tree`` (when it has one) is copied byte for byte; whether
    the tree is there is recorded in ``info/has_tree``.
    """
    model, blob = load_model(multitask)
    names = [t.name for t in model.tasks]
    if task not in names:
        raise BabelflowError(f"{multitask}: no task '{task}' (tasks: {', '.join(names)})")
    i = names.index(task)
    single = model.split(i)
    egs = EgsDir(blob["task_egs"][i])
    md = ModelDir(out_dir)
    info = {"task": task, "kind": model.tasks[i].kind, "num_outputs": model.tasks[i].num_outputs,
            "left_context": model.left_context, "right_context": model.right_context, "input_dim": model.input_dim,
            "ivector_dim": model.ivector_dim, "feat_type": egs.info.get("feat_type", ""),
            "cmvn_opts": egs.info.get("cmvn_opts", "--norm-means=false --norm-vars=false"),
            "source_model": str(multitask), "source_output": f"output-{i}", "egs_dir": str(egs.path)}
    labels = egs.classes() if info["kind"] == "utterance" else []
    conf = ""
    if feats_dir is not None:
        confs = sorted((Path(feats_dir) / "conf").glob("*.conf"))
        if confs:
            conf = confs[0].read_text()
            write_text(md.conf_dir / confs[0].name, conf)
    has_tree = False
    if info["kind"] == "frame" and ali and not looks_like_rspecifier(ali):
        from ..kaldi.transition_model import read_transition_model, write_transition_model

        tm = read_transition_model(Path(ali) / "final.mdl")
        if tm.num_pdfs != info["num_outputs"]:
            raise BabelflowError(f"{ali}/final.mdl: {tm.num_pdfs} pdfs, but head '{task}' has {info['num_outputs']}")
        write_transition_model(md.trans_path, tm)
        has_tree = _copy_tree(Path(ali) / "tree", md.tree_path)
        if (Path(ali) / "phones.txt").is_file():  # the phone symbols of trans.mdl (graphs, phone scoring)
            write_text(md.path / "phones.txt", (Path(ali) / "phones.txt").read_text())
    save_task_model(md.path, single, {**info, "labels": labels, "feature_conf": conf, "priors": None,
                                      "prior_method": ""})
    write_text(md.cmvn_opts_path, info["cmvn_opts"] + "\n")
    md.write_info({k: info[k] for k in ("kind", "num_outputs", "left_context", "right_context", "ivector_dim",
                                        "feat_type", "input_dim")})
    md.write_info({"has_tree": str(has_tree).lower()})
    if labels:
        write_text(md.info_dir / "classes.txt", "".join(f"{c} {j}\n" for j, c in enumerate(labels)))
    return {**info, "has_tree": has_tree}


def _copy_tree(src: Path, dest: Path) -> bool:
    """Copy the alignment dir's decision tree byte for byte; False when it has none."""
    if not src.is_file():
        dest.unlink(missing_ok=True)  # not a stale one from an earlier split
        log.warning("%s: no decision tree; the model dir gets none (Kaldi's mkgraph.sh needs one)", src)
        return False
    data = src.read_bytes()
    if not data.startswith(_TREE_MAGIC):
        raise BabelflowError(f"{src}: not a Kaldi decision tree (no ContextDependency header)")
    with atomic_open(dest, "wb") as f:
        f.write(data)
    return True


def average_posteriors(model: MultiTaskModel, egs: EgsDir, num_egs: int, seed: int = 0,
                       batch_frames: int = BATCH_FRAMES) -> tuple[np.ndarray, int]:
    """Kaldi adjust_priors.sh: the mean softmax output over (a random subset of) the task's own
    training egs, every frame of each; returns (posterior sum normalised, frames used). Egs go
    in batches of up to ``batch_frames`` input frames, on the model's device."""
    rng = np.random.default_rng(seed)
    archives = list(egs.archives("train"))
    sizes = np.array([len(a) for a in archives])
    picks = rng.choice(sizes.sum(), size=min(num_egs, int(sizes.sum())), replace=False)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    dev = next(model.parameters()).device
    total = torch.zeros(model.tasks[0].num_outputs, dtype=torch.float64, device=dev)
    frames = 0
    context = model.left_context + model.right_context
    with torch.no_grad():
        for a, arch in enumerate(archives):
            ids = np.sort(picks[(picks >= offsets[a]) & (picks < offsets[a + 1])] - offsets[a])
            for b in length_batches(arch.index["n"][ids], context, batch_frames):
                part = ids[np.sort(b)]
                x, n = arch.inputs_padded(part, model.left_context, model.right_context)
                iv = torch.from_numpy(arch.ivector[part]).to(dev) if arch.ivector is not None else None
                logp = model(torch.from_numpy(x).to(dev), 0, iv)
                mask = torch.arange(logp.shape[1], device=dev)[None, :] < torch.from_numpy(n).to(dev)[:, None]
                total += (logp.exp() * mask[..., None]).sum(dim=(0, 1)).double()
                frames += int(n.sum())
    if frames == 0:
        raise BabelflowError(f"{egs.path}: no training examples to compute priors from")
    return (total / total.sum()).cpu().numpy(), frames


def count_priors(egs: EgsDir, floor: float) -> np.ndarray:
    """pdf counts of the task's training labels (pytorch-kaldi style), floored and normalised."""
    counts = np.zeros(egs.num_outputs)
    for arch in egs.archives("train"):
        lab = arch.labels[arch.labels["pdf"] >= 0]
        np.add.at(counts, lab["pdf"], lab["weight"])
    p = np.maximum(counts / max(counts.sum(), 1e-30), floor)
    return p / p.sum()


def compute_priors(model_dir: str | Path, egs_dir: str | Path | None = None, method: str = "posterior",
                   num_egs: int = 20000, floor: float = 1e-8, seed: int = 0, batch_frames: int = BATCH_FRAMES,
                   device: str = "auto") -> dict:
    """Store priors in a frame task's model (``adjust_priors.sh``), log KL to the count priors."""
    md = ModelDir(model_dir)
    model, blob = md.load()
    if blob["kind"] != "frame":
        raise BabelflowError(f"{model_dir}: priors are for frame tasks (this is an utterance task)")
    egs = EgsDir(egs_dir or blob["egs_dir"])
    counts = count_priors(egs, floor)
    if method == "posterior":
        priors, frames = average_posteriors(model.to(resolve_device(device)), egs, num_egs, seed, batch_frames)
        priors = np.maximum(priors, floor)
        priors /= priors.sum()
    elif method == "counts":
        priors, frames = counts, 0
    else:
        raise BabelflowError(f"priors.method: '{method}' (use posterior or counts)")
    kl = float(np.sum(priors * np.log(priors / counts)))
    log.info("priors (%s, %d frames): KL(priors || label counts) = %.4f nats; max |diff| %.4f", method, frames, kl,
             float(np.abs(priors - counts).max()))
    blob.update(priors=torch.from_numpy(priors.astype(np.float32)), prior_method=method)
    save_task_model(md.path, model.cpu(), task_meta(blob))
    write_text(md.priors_path, " [ " + " ".join(f"{p:.7g}" for p in priors) + " ]\n")
    return {"method": method, "frames": frames, "kl_from_counts": kl, "num_pdfs": len(priors)}


