"""Inference with a task model: ``compute`` (Kaldi ``nnet3-compute`` for an AmNnetSimple)
and ``bottleneck`` (the recipe's multilingual bottleneck features).

Utterances are padded as Kaldi pads them (first/last frame repeated over the left/right
context), so outputs at the edges equal Kaldi's. Many utterances go through one forward
pass (:mod:`.batching`: sorted by length within a window of the input, padded with their
own edge frames to the batch's longest), and long ones are cut into pieces with their
context; the network is frame-local, so this gives the per-utterance numbers (up to float
summation order) in bounded memory. Outputs are written in input order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from ..data.datadir import read_utt2spk
from ..errors import BabelflowError
from ..features import apply_cmvn, parse_cmvn_opts
from ..io import atomic_open
from ..tables import open_matrix_writer, read_matrices
from .batching import BATCH_FRAMES, length_batches, resolve_device
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


def _device_of(model: MultiTaskModel) -> torch.device:
    return next(model.parameters()).device


def frame_outputs(model: MultiTaskModel, feats: np.ndarray, chunk: int = 2000, embed: bool = False) -> np.ndarray:
    """Per-frame log-posteriors (or trunk embeddings) of one utterance, computed chunk by chunk
    (the per-utterance path: ``--batch-frames 0``, and the reference the batched one must equal)."""
    lc, rc = model.left_context, model.right_context
    x = torch.from_numpy(padded(feats, lc, rc)).to(_device_of(model))
    outs = []
    with torch.no_grad():
        for s in range(0, feats.shape[0], chunk):
            n = min(chunk, feats.shape[0] - s)
            piece = x[s:s + lc + n + rc][None]
            outs.append((model.embed(piece) if embed else model(piece, 0))[0].cpu().numpy())
    return np.concatenate(outs)


def utterance_posteriors(model: MultiTaskModel, feats: np.ndarray) -> np.ndarray:
    """Class posteriors of one utterance (the per-utterance path of an utterance task)."""
    x = torch.from_numpy(padded(feats, model.left_context, model.right_context)).to(_device_of(model))
    with torch.no_grad():
        return model(x[None], 0)[0].exp().cpu().numpy()


def _gather(utts: list[np.ndarray], pieces: list[tuple[int, int, int]], lc: int, width: int) -> np.ndarray:
    """(B, width, dim) inputs: rows ``s - lc ...`` of each piece's utterance, clipped to its
    first/last frame (Kaldi's edge padding, also for the rows past the piece's own end)."""
    x = np.empty((len(pieces), width, utts[pieces[0][0]].shape[1]), np.float32)
    for row, (i, s, _) in enumerate(pieces):
        x[row] = utts[i][np.clip(np.arange(s - lc, s - lc + width), 0, len(utts[i]) - 1)]
    return x


def batch_frame_outputs(model: MultiTaskModel, utts: list[np.ndarray], batch_frames: int = BATCH_FRAMES,
                        embed: bool = False) -> list[np.ndarray]:
    """:func:`frame_outputs` of many utterances, batched: pieces of at most
    ``batch_frames - context`` output frames, sorted by length, batched within ``batch_frames``."""
    lc, rc = model.left_context, model.right_context
    step = max(1, batch_frames - lc - rc)
    pieces = [(i, s, min(step, len(f) - s)) for i, f in enumerate(utts) for s in range(0, len(f), step)]
    results: list[np.ndarray | None] = [None] * len(utts)
    dev = _device_of(model)
    with torch.no_grad():
        for b in length_batches(np.array([p[2] for p in pieces]), lc + rc, batch_frames):
            part = [pieces[j] for j in b]
            x = torch.from_numpy(_gather(utts, part, lc, lc + rc + max(p[2] for p in part))).to(dev)
            out = (model.embed(x) if embed else model(x, 0)).cpu().numpy()
            for row, (i, s, n) in enumerate(part):
                if results[i] is None:
                    results[i] = np.empty((len(utts[i]), out.shape[-1]), np.float32)
                results[i][s:s + n] = out[row, :n]
    return results  # type: ignore[return-value]


def batch_utterance_posteriors(model: MultiTaskModel, utts: list[np.ndarray],
                               batch_frames: int = BATCH_FRAMES) -> list[np.ndarray]:
    """:func:`utterance_posteriors` of many utterances, batched; the pooling sees each one's own
    frames only (the mask)."""
    lc, rc = model.left_context, model.right_context
    lengths = np.array([len(f) for f in utts])
    results: list[np.ndarray | None] = [None] * len(utts)
    dev = _device_of(model)
    with torch.no_grad():
        for b in length_batches(lengths, lc + rc, batch_frames):
            width = int(lengths[b].max())
            x = torch.from_numpy(_gather(utts, [(int(i), 0, 0) for i in b], lc, lc + rc + width)).to(dev)
            mask = torch.arange(width, device=dev)[None, :] < torch.from_numpy(lengths[b]).to(dev)[:, None]
            post = model(x, 0, None, mask).exp().cpu().numpy()
            for row, i in enumerate(b):
                results[i] = post[row]
    return results  # type: ignore[return-value]


def outputs(model: MultiTaskModel, items: Iterable[tuple[str, np.ndarray]], kind: str = "frame",
            batch_frames: int = BATCH_FRAMES, embed: bool = False) -> Iterator[tuple[str, np.ndarray]]:
    """(utt, output) in input order: frame outputs (``embed``: trunk embeddings) or, ``kind``
    utterance, class posteriors. ``batch_frames`` <= 0: one utterance per forward (the old
    path). The input is read in windows of ~2 batches (sorted within each), so memory stays
    bounded: the outputs of one window are held until written in input order."""
    if batch_frames <= 0:
        for utt, f in items:
            yield utt, (frame_outputs(model, f, embed=embed) if kind == "frame" or embed
                        else utterance_posteriors(model, f))
        return
    for window in _windows(items, 2 * batch_frames):
        feats = [f for _, f in window]
        outs = (batch_frame_outputs(model, feats, batch_frames, embed) if kind == "frame" or embed
                else batch_utterance_posteriors(model, feats, batch_frames))
        yield from zip((u for u, _ in window), outs)


def _windows(items: Iterable[tuple[str, np.ndarray]], frames: int) -> Iterator[list[tuple[str, np.ndarray]]]:
    """Consecutive groups of items of about ``frames`` frames (at least one item each)."""
    buf, total = [], 0
    for item in items:
        buf.append(item)
        total += len(item[1])
        if total >= frames:
            yield buf
            buf, total = [], 0
    if buf:
        yield buf


def _short_warning(model: MultiTaskModel, items: Iterable[tuple[str, np.ndarray]]
                   ) -> Iterator[tuple[str, np.ndarray]]:
    context = model.left_context + model.right_context + 1
    for utt, feats in items:
        if feats.shape[0] < context:
            log.warning("utterance '%s': %d frames, fewer than the context (%d): edges padded as Kaldi pads them",
                        utt, feats.shape[0], context)
        yield utt, feats


def compute(model_dir: str | Path, feats_rspecifier: str, out_wspecifier: str, use_priors: bool = True,
            cmvn: str | None = None, utt2spk: str | None = None, labels_out: str | None = None,
            batch_frames: int = BATCH_FRAMES, device: str = "auto") -> int:
    """Frame tasks: log p(pdf|x) - log prior(pdf) per frame (or log-posteriors without priors),
    a float matrix per utterance that latgen-faster-mapped decodes. Utterance tasks: the class
    posteriors (1 x classes) and, with ``labels_out``, the argmax label per utterance."""
    model, blob = ModelDir(model_dir).load()
    model.to(resolve_device(device))
    log_prior = None
    if blob["kind"] == "frame" and use_priors:
        if blob.get("priors") is None:
            raise BabelflowError(f"{model_dir}: the model has no priors yet (run `babelflow priors`, "
                                 f"or use --no-priors)")
        log_prior = np.log(blob["priors"].numpy())
    labels = []
    n = 0
    items = _short_warning(model, input_features(feats_rspecifier, blob, cmvn, utt2spk))
    with open_matrix_writer(out_wspecifier) as w:
        for utt, out in outputs(model, items, blob["kind"], batch_frames):
            if blob["kind"] == "frame":
                w[utt] = out - log_prior if log_prior is not None else out
            else:
                w[utt] = out[None, :]
                labels.append((utt, blob["labels"][int(out.argmax())] if blob["labels"] else str(int(out.argmax()))))
            n += 1
    if labels_out:
        with atomic_open(labels_out, "w") as f:
            f.writelines(f"{u} {lab}\n" for u, lab in labels)
    return n


def bottleneck(model_dir: str | Path, feats_rspecifier: str, out_wspecifier: str, cmvn: str | None = None,
               utt2spk: str | None = None, batch_frames: int = BATCH_FRAMES, device: str = "auto") -> int:
    """The shared trunk's last layer (the bottleneck when there is one) per frame, as features."""
    model, blob = ModelDir(model_dir).load()
    model.to(resolve_device(device))
    n = 0
    with open_matrix_writer(out_wspecifier) as w:
        for utt, out in outputs(model, input_features(feats_rspecifier, blob, cmvn, utt2spk),
                                batch_frames=batch_frames, embed=True):
            w[utt] = out
            n += 1
    return n
