"""An egs job's examples between drawing and writing: gathered a batch of utterances at a time."""

from __future__ import annotations

import numpy as np

from ..errors import BabelflowError
from .arks import KaldiArks
from .chunking import batch_starts, frame_labels
from .format import LABEL_DTYPE, ArchiveWriter, PartWriter

BATCH_FRAMES = 1 << 15  # frames of features an egs job gathers before writing them (memory stays O(1))


class Pending:
    """Examples drawn but not yet written: they go to the writers BATCH_FRAMES frames at a time, in a
    few vectorised steps per batch (chunk starts, labels, one conversion of the features), byte for
    byte what writing each utterance on its own would give."""

    def __init__(self, writers: dict[str, ArchiveWriter], frames_per_eg: int, num_pdfs: int, arks: KaldiArks):
        self.writers, self.f, self.num_pdfs, self.arks = writers, frames_per_eg, num_pdfs, arks
        self.out = PartWriter(writers)
        self._clear()

    def _clear(self) -> None:
        self.keys, self.parts, self.feats, self.counts, self.draws, self.targets, self.ivectors, self.firsts = (
            [] for _ in range(8))
        self.checks: list[tuple[str, np.ndarray]] = []  # alignments whose pdf ids are to be range-checked
        self.frames = 0

    def check(self, utt: str, ali: np.ndarray) -> None:
        self.checks.append((utt, ali))

    def add(self, key: str, parts: tuple[str, ...], feats: np.ndarray, draw, targets: np.ndarray,
            ivectors: np.ndarray | None, first: int | None = None) -> None:
        """An utterance's examples: frame tasks give the chunk draw (count, order) and the alignment,
        utterance tasks (starts, sizes) and one class per example; ``first``: its first row in the
        feature store (its features are not written again)."""
        if feats.ndim != 2 or feats.shape[1] != self.writers["train"].feat_dim:
            raise BabelflowError(f"{self.writers[parts[0]].prefix}: segment '{key}' has shape {feats.shape}, "
                                 f"expected (*, {self.writers['train'].feat_dim})")
        self.keys.append(key), self.parts.append(parts), self.feats.append(feats)
        self.draws.append(draw), self.targets.append(targets), self.ivectors.append(ivectors)
        self.firsts.append(first)
        self.counts.append(draw[0] if self.f else len(draw[0]))
        self.frames += feats.shape[0]
        if self.frames >= BATCH_FRAMES:
            self.flush()

    def flush(self) -> None:
        self._check_pdfs()
        if self.keys:
            self._write()
        self._clear()
        self.arks.release()  # the pages read so far leave this process (memory stays O(1))

    def _check_pdfs(self) -> None:
        if not self.checks:
            return
        cat = np.concatenate([a for _, a in self.checks])
        if len(cat) and (cat.min() < 0 or cat.max() >= self.num_pdfs):
            for utt, ali in self.checks:
                if len(ali) and (ali.min() < 0 or ali.max() >= self.num_pdfs):
                    raise BabelflowError(f"utterance '{utt}': pdf id {int(ali.max())} outside [0, "
                                         f"{self.num_pdfs}) of the alignment's model")

    def _write(self) -> None:
        counts = np.array(self.counts, np.int64)
        labels = classes = None
        if self.f:
            lengths = np.array([m.shape[0] for m in self.feats], np.int64)
            t0 = batch_starts(lengths, counts, [o for _, o in self.draws], self.f)
            seg = np.repeat(np.arange(len(counts)), counts)
            n = np.full(len(t0), self.f, np.int32)
            labels = frame_labels(t0, seg, lengths, self.targets, self.f, LABEL_DTYPE).reshape(len(t0), self.f)
        else:
            t0, n = (np.concatenate([d[i] for d in self.draws]) for i in (0, 1))
            classes = np.concatenate(self.targets)
        ivectors = np.concatenate(self.ivectors) if self.ivectors[0] is not None else None
        if self.firsts[0] is not None:  # the features are in the store: segments name its rows
            lengths = np.array([m.shape[0] for m in self.feats], np.int64)
            self.out.write_stored(self.parts, self.keys, np.array(self.firsts, np.int64), lengths, counts, t0, n,
                                  classes, ivectors)
            return
        self.out.write(self.parts, self.keys, self.feats, counts, t0, n, labels, classes, ivectors)
