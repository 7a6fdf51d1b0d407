"""Batching for inference (compute, bottleneck, priors, eval): many utterances or egs per
forward pass, grouped by length, and the device they run on.

One forward per utterance spends most of its time in per-call overhead on short utterances
(a small model, ~150 frames); sorting by length and filling batches up to a frame budget
keeps the padding small and the memory bounded. The padding repeats edge frames (Kaldi's),
and the network is frame-local, so batched outputs equal the per-utterance ones up to float
summation order. Torch is imported only where a device is resolved, so that the CLI can
list these options cheaply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import BabelflowError

if TYPE_CHECKING:
    import torch

# CLI flags only, not params.yaml keys: neither changes a result beyond float summation order.
DEVICES = ("auto", "cpu", "cuda")
# input frames (context and padding included) per forward pass: CPU time was flat from 4096 to 16384
# (demo model, bench/compute.py); 8192 keeps a 5000-pdf output batch at ~160 MB
BATCH_FRAMES = 8192


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: the GPU when torch sees one, else the CPU; ``cuda`` without one is an error."""
    import torch

    if device not in DEVICES:
        raise BabelflowError(f"--device {device}: use one of {', '.join(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BabelflowError("--device cuda: torch sees no CUDA device (use --device cpu or auto)")
    return torch.device(device)


def length_batches(lengths: np.ndarray, context: int, batch_frames: int, same_length: bool = False) -> list[np.ndarray]:
    """Positions into ``lengths`` sorted by length (stable) and cut into batches whose padded
    input, ``len(batch) * (context + longest)`` frames, stays within ``batch_frames`` (a longer
    item goes alone). ``same_length``: also cut where the length changes."""
    lengths = np.asarray(lengths, np.int64)
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    for i in range(1, len(order) + 1):
        if i == len(order):
            batches.append(order[start:i])
            break
        n = int(lengths[order[i]])  # ascending: the longest if order[i] joins
        if (i + 1 - start) * (context + n) > batch_frames or (same_length and n != lengths[order[start]]):
            batches.append(order[start:i])
            start = i
    return batches
