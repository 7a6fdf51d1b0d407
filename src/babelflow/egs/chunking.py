"""How an utterance is cut into examples.

Frame tasks follow Kaldi's ``UtteranceSplitter`` (``nnet3/nnet-example-utils.cc``) for a
single ``--num-frames``: the number of chunks minimises a cost that penalises gaps twice
as much as overlaps (ties within 2 are broken at random), overlaps go to the earliest
chunk boundaries (Kaldi's ``DistributeRandomly`` truncates the fractional parts, so it
is deterministic), gaps are spread evenly at random, and every output frame is weighted
1/(number of chunks covering it). Kaldi draws its gaps from ``std::random_device``;
here they come from a seeded generator, so egs are reproducible.
"""

from __future__ import annotations

import numpy as np


def kaldi_chunks(length: int, frames_per_eg: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """First frames of the chunks of an utterance, and each output frame's weight.

    Returns (starts, weights) where weights has shape (num_chunks, frames_per_eg); an
    utterance shorter than one chunk gives no chunks.
    """
    f = frames_per_eg
    if length < f:
        return np.zeros(0, np.int32), np.zeros((0, f), np.float32)
    n1 = length // f
    costs = {n: (n * f - length) if n * f > length else 2.0 * (length - n * f) for n in (n1, n1 + 1)}
    best = min(costs.values())
    candidates = [n for n, c in costs.items() if c < best + 1.9999]
    n = candidates[int(rng.integers(len(candidates)))] if len(candidates) > 1 else candidates[0]
    total_gap = length - n * f
    gaps = np.zeros(n, np.int64)
    if total_gap < 0:  # overlaps between chunks, the leftover ones on the first boundaries
        k = -total_gap
        per = np.full(n - 1, k // (n - 1))
        per[: k - per.sum()] += 1
        gaps[1:] = -per
    else:  # gaps anywhere, including both ends (the end gap is implicit)
        spread = np.full(n + 1, total_gap // (n + 1))
        spread[: total_gap % (n + 1)] += 1
        gaps = rng.permutation(spread)[:n]
    starts = (np.cumsum(gaps) + f * np.arange(n)).astype(np.int32)
    # chunks covering each frame: +1 at every chunk start, -1 after its end, cumulated
    delta = np.bincount(starts, minlength=length + 1) - np.bincount(starts + f, minlength=length + 1)
    count = np.cumsum(delta[:length])
    weights = 1.0 / count[starts[:, None] + np.arange(f)[None, :]]
    return starts, weights.astype(np.float32)


def utterance_chunks(length: int, mode: str, min_chunk: int, max_chunk: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(starts, sizes) of utterance-task examples: the whole utterance, or consecutive
    random-length chunks in [min_chunk, max_chunk] as x-vector egs (an utterance shorter
    than min_chunk is kept whole; a tail shorter than min_chunk is dropped)."""
    if mode == "whole" or length <= min_chunk:
        return np.array([0], np.int32), np.array([length], np.int32)
    starts, sizes, t = [], [], 0
    while length - t >= min_chunk:
        size = min(int(rng.integers(min_chunk, max_chunk + 1)), length - t)
        starts.append(t), sizes.append(size)
        t += size
    return np.asarray(starts, np.int32), np.asarray(sizes, np.int32)
