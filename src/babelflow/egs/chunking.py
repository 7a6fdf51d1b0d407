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
    starts = chunk_starts(length, frames_per_eg, rng)
    return starts, chunk_weights(starts, np.zeros(len(starts), np.int64), np.array([length]), frames_per_eg)


def chunk_starts(length: int, frames_per_eg: int, rng: np.random.Generator) -> np.ndarray:
    """First frames (int32) of the chunks of an utterance of ``length`` frames (none when shorter than one)."""
    n, order = chunk_draw(length, frames_per_eg, rng)
    return batch_starts([length], [n], [order], frames_per_eg) if n else np.zeros(0, np.int32)


def chunk_draw(length: int, frames_per_eg: int, rng: np.random.Generator) -> tuple[int, np.ndarray | None]:
    """What is random in cutting an utterance, drawn from ``rng``: the number of chunks (0 when
    shorter than one) and, when they leave gaps, the order the gaps are dealt in (None when they
    overlap). :func:`batch_starts` turns draws of many utterances into chunk starts at once."""
    f = frames_per_eg
    if length < f:
        return 0, None
    n1, rem = divmod(length, f)
    under, over = 2.0 * rem, f - rem  # costs of n1 chunks (gaps count double) and of n1 + 1 (overlaps)
    best = min(under, over)
    if under < best + 1.9999 and over < best + 1.9999:  # a tie (within 2): drawn at random
        n = (n1, n1 + 1)[int(rng.integers(2))]
    else:
        n = n1 if under < over else n1 + 1
    return n, (rng.permutation(n + 1)[:n] if length >= n * f else None)


def batch_starts(lengths, counts, orders, frames_per_eg: int) -> np.ndarray:
    """Chunk starts (int32, utterance after utterance) from :func:`chunk_draw` draws (``counts``,
    ``orders``) of utterances of ``lengths`` frames (each with at least one chunk).

    Overlaps go to the earliest chunk boundaries (total overlap k over n - 1 boundaries: the first
    k mod (n - 1) get one frame more); gaps are spread evenly over the n + 1 places around the
    chunks (the first total mod (n + 1) places one frame more) and dealt in the drawn order."""
    f = frames_per_eg
    counts = np.asarray(counts, np.int64)
    seg = np.repeat(np.arange(len(counts)), counts)
    first = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=first[1:])
    k = np.arange(first[-1]) - first[seg]  # chunk index within its utterance
    n = counts[seg]
    total = (np.asarray(lengths, np.int64) - counts * f)[seg]  # total gap (< 0: overlap)
    order = np.concatenate([np.zeros(c, np.int64) if o is None else o for o, c in zip(orders, counts)])
    q, r = np.divmod(total, n + 1)
    gaps = q + (order < r)
    q, r = np.divmod(-total, np.maximum(n - 1, 1))
    gaps = np.where(total >= 0, gaps, np.where(k == 0, 0, -(q + (k <= r))))  # gap before chunk k
    cum = np.cumsum(gaps)
    return (cum - np.repeat((cum - gaps)[first[:-1]], counts) + f * k).astype(np.int32)


def chunk_weights(starts: np.ndarray, seg: np.ndarray, lengths: np.ndarray, frames_per_eg: int) -> np.ndarray:
    """Weight of every output frame of chunks of several utterances at once: chunk ``k`` starts at
    frame ``starts[k]`` of utterance ``seg[k]`` (of ``lengths[seg[k]]`` frames); a frame in ``c``
    chunks of its utterance weighs 1/c. Returns float32 (num_chunks, frames_per_eg)."""
    f = frames_per_eg
    base = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=base[1:])
    total = int(base[-1])
    first = base[seg] + starts  # the chunks' first frames in the utterances laid end to end
    # chunks covering each frame: +1 at every chunk start, -1 after its end, cumulated (a chunk
    # ends inside its utterance, so the counts do not leak from one utterance into the next)
    delta = np.bincount(first, minlength=total + 1) - np.bincount(first + f, minlength=total + 1)
    count = np.cumsum(delta[:total])
    return (1.0 / count[first[:, None] + np.arange(f)[None, :]]).astype(np.float32)


def frame_labels(t0: np.ndarray, seg: np.ndarray, lengths: np.ndarray, alis: list[np.ndarray],
                 frames_per_eg: int, label_dtype: np.dtype) -> np.ndarray:
    """(pdf, weight) records of the output frames of chunks starting at ``t0`` of utterances ``seg``
    (``lengths`` frames, alignments ``alis``): frames beyond an alignment (within the length
    tolerance) get no supervision (pdf -1, weight 0), as in Kaldi."""
    f = frames_per_eg
    ali_len = np.array([len(a) for a in alis], np.int64)
    first = np.zeros(len(alis) + 1, np.int64)
    np.cumsum(ali_len, out=first[1:])
    cat = np.concatenate([*alis, np.full(1, -1, np.int32)])  # + a sentinel, for utterances with no alignment
    frames = t0[:, None] + np.arange(f)[None, :]
    end = ali_len[seg][:, None]
    inside = frames < end
    labels = np.zeros(frames.size, label_dtype)
    labels["pdf"] = np.where(inside, cat[first[seg][:, None] + np.minimum(frames, end - 1)], -1).ravel()
    labels["weight"] = np.where(inside, chunk_weights(t0, seg, lengths, f), 0.0).ravel()
    return labels


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
