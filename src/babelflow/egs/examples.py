"""Our examples as Kaldi NnetExamples: of an egs dir, and of a merged dir in schedule order.

An example becomes the NnetExample that ``nnet3-get-egs`` would have written: an
``input`` NnetIo with t = -left_context .. frames_per_eg + right_context - 1 (edge rows
repeated), an ``ivector`` row when present, and a sparse ``output`` with one
``[ pdf weight ]`` per frame (empty where unsupervised).

A merged dir's examples get what Kaldi's training pipes do with
``nnet3-copy-egs --outputs=... --weights=...``: the ``output`` NnetIo is scaled by the
task weight in float32 (``ScaleSupervisionWeight``, a no-op for 1.0) and renamed
``output-<i>``, so a merged eg equals the one Kaldi's trainer would see.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..errors import BabelflowError
from ..kaldi.general_matrix import SparseMatrix
from ..kaldi.nnet_example import NnetExample, NnetIo
from .format import Archive
from .merged import MergedDir
from .reader import EgsDir


def example_at(egs: EgsDir, arch: Archive, i: int) -> tuple[str, NnetExample]:
    """Example ``i`` of an archive of ``egs`` as (key, Kaldi NnetExample)."""
    ids = np.array([i])
    rec = arch.index[i]
    ios = [NnetIo.frames("input", -egs.left_context, arch.inputs(ids, egs.left_context, egs.right_context)[0])]
    if arch.ivector is not None:
        ios.append(NnetIo.frames("ivector", 0, arch.ivector[i:i + 1]))
    num_out = egs.num_outputs
    if egs.kind == "frame":
        pdf, weight = arch.frame_targets(ids)
        rows = [(num_out, [(int(p), float(w))] if p >= 0 else []) for p, w in zip(pdf[0], weight[0])]
    else:
        rows = [(num_out, [(int(rec["label"]), 1.0)])]
    ios.append(NnetIo.frames("output", 0, SparseMatrix.from_rows(rows)))
    return arch.key(i, egs.key_format), NnetExample(ios)


def nnet_examples(egs: EgsDir, part: str = "train") -> Iterator[tuple[str, NnetExample]]:
    """Every example of ``part`` in archive order, as Kaldi NnetExamples."""
    for arch in egs.archives(part):
        for i in range(len(arch)):
            yield example_at(egs, arch, i)


def scale_and_rename(eg: NnetExample, output: str, weight: float) -> NnetExample:
    """Kaldi's ScaleSupervisionWeight then rename of the NnetIo ``output`` (in place)."""
    for nio in eg.io:
        if nio.name == "output":
            if weight != 1.0:
                w = np.float32(weight)
                feats = nio.features
                if isinstance(feats, SparseMatrix):
                    nio.features = SparseMatrix([(d, [(c, float(np.float32(v) * w)) for c, v in pairs])
                                                 for d, pairs in feats.rows])
                else:
                    nio.features = np.asarray(feats, np.float32) * w
            nio.name = output
            return eg
    raise BabelflowError("eg has no NnetIo named 'output'")


def merged_nnet_examples(merged: MergedDir, part: str = "train",
                         archive: int | None = None) -> Iterator[tuple[str, NnetExample]]:
    """(key, NnetExample) of a merged dir in schedule order, ``output`` renamed and scaled as Kaldi does."""
    for b in merged.blocks(part, archive):
        egs = merged.tasks[b.task].egs
        for piece in b.pieces:
            arch = merged.piece_archive(b, piece, part)
            for i in range(piece.first, piece.first + piece.count):
                key, eg = example_at(egs, arch, i)
                yield key, scale_and_rename(eg, b.output, b.weight)
