"""Inference with a task model: ``compute`` (Kaldi ``nnet3-compute`` for an AmNnetSimple)
and ``bottleneck`` (the recipe's multilingual bottleneck features).

Utterances are padded as Kaldi pads them (first/last frame repeated over the left/right
context), so outputs at the edges equal Kaldi's; long utterances are computed in chunks
with their context, which gives the same numbers (the network is frame-local) in bounded
memory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..data.datadir import read_utt2spk
from ..errors import BabelflowError
from ..features import apply_cmvn, parse_cmvn_opts
from ..io import atomic_open
from ..tables import open_matrix_writer, read_matrices
from .model import MultiTaskModel
from .modeldir import ModelDir

log = logging.getLogger("babelflow")


def input_features(feats_rspecifier: str, blob: dict, cmvn_rspecifier: str | None = None,
                   utt2spk: str | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Features as the model was trained on them: dims checked, CMVN applied per its cmvn_opts."""
    means, variances = parse_cmvn_opts(blob["cmvn_opts"])
    stats = dict(read_matrices(cmvn_rspecifier)) if means and cmvn_rspecifier else None
    if means and stats is None:
        raise BabelflowError(f"the model's cmvn_opts are '{blob['cmvn_opts']}': give --cmvn (and --utt2spk)")
    spk = read_utt2spk(utt2spk) if utt2spk else {}
    for utt, m in read_matrices(feats_rspecifier):
        m = np.asarray(m, dtype=np.float32)
        if m.ndim != 2 or m.shape[1] != blob["input_dim"]:
            raise BabelflowError(f"{feats_rspecifier}: utterance '{utt}' has feature dim "
                                 f"{m.shape[1] if m.ndim == 2 else m.shape}, the model expects {blob['input_dim']}")
        if m.shape[0] == 0:
            raise BabelflowError(f"{feats_rspecifier}: utterance '{utt}' has no frames")
        if stats is not None:
            key = spk.get(utt, utt)
            if key not in stats:
                raise BabelflowError(f"{cmvn_rspecifier}: no CMVN stats for '{key}' (utterance '{utt}')")
            m = apply_cmvn(m, stats[key], means, variances)
        yield utt, m


def padded(feats: np.ndarray, left: int, right: int) -> np.ndarray:
    """Kaldi's edge padding: the first frame repeated ``left`` times, the last ``right`` times."""
    return np.concatenate([np.repeat(feats[:1], left, 0), feats, np.repeat(feats[-1:], right, 0)])


def frame_outputs(model: MultiTaskModel, feats: np.ndarray, chunk: int = 2000, embed: bool = False) -> np.ndarray:
    """Per-frame log-posteriors (or trunk embeddings) of one utterance, computed chunk by chunk."""
    lc, rc = model.left_context, model.right_context
    x = torch.from_numpy(padded(feats, lc, rc))
    outs = []
    with torch.no_grad():
        for s in range(0, feats.shape[0], chunk):
            n = min(chunk, feats.shape[0] - s)
            piece = x[s:s + lc + n + rc][None]
            outs.append((model.embed(piece) if embed else model(piece, 0))[0].numpy())
    return np.concatenate(outs)


def compute(model_dir: str | Path, feats_rspecifier: str, out_wspecifier: str, use_priors: bool = True,
            cmvn: str | None = None, utt2spk: str | None = None, labels_out: str | None = None) -> int:
    """Frame tasks: log p(pdf|x) - log prior(pdf) per frame (or log-posteriors without priors),
    a float matrix per utterance that latgen-faster-mapped decodes. Utterance tasks: the class
    posteriors (1 x classes) and, with ``labels_out``, the argmax label per utterance."""
    model, blob = ModelDir(model_dir).load()
    log_prior = None
    if blob["kind"] == "frame" and use_priors:
        if blob.get("priors") is None:
            raise BabelflowError(f"{model_dir}: the model has no priors yet (run `babelflow priors`, "
                                 f"or use --no-priors)")
        log_prior = np.log(blob["priors"].numpy())
    labels = []
    n = 0
    with open_matrix_writer(out_wspecifier) as w:
        for utt, feats in input_features(feats_rspecifier, blob, cmvn, utt2spk):
            if feats.shape[0] < model.left_context + model.right_context + 1:
                log.warning("utterance '%s': %d frames, fewer than the context (%d): edges padded as Kaldi pads them",
                            utt, feats.shape[0], model.left_context + model.right_context + 1)
            if blob["kind"] == "frame":
                out = frame_outputs(model, feats)
                w[utt] = out - log_prior if log_prior is not None else out
            else:
                with torch.no_grad():
                    x = torch.from_numpy(padded(feats, model.left_context, model.right_context))[None]
                    post = model(x, 0)[0].exp().numpy()
                w[utt] = post[None, :]
                labels.append((utt, blob["labels"][int(post.argmax())] if blob["labels"] else str(int(post.argmax()))))
            n += 1
    if labels_out:
        with atomic_open(labels_out, "w") as f:
            f.writelines(f"{u} {lab}\n" for u, lab in labels)
    return n


def bottleneck(model_dir: str | Path, feats_rspecifier: str, out_wspecifier: str, cmvn: str | None = None,
               utt2spk: str | None = None) -> int:
    """The shared trunk's last layer (the bottleneck when there is one) per frame, as features."""
    model, blob = ModelDir(model_dir).load()
    n = 0
    with open_matrix_writer(out_wspecifier) as w:
        for utt, feats in input_features(feats_rspecifier, blob, cmvn, utt2spk):
            w[utt] = frame_outputs(model, feats, embed=True)
            n += 1
    return n
