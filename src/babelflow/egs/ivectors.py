"""Online i-vectors for egs: a Kaldi ``ivector_online.scp`` dir, rows picked as ``nnet3-get-egs`` picks them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import kaldiio
import numpy as np

from ..errors import BabelflowError
from ..io import read_scalar

IVECTOR_LENGTH_TOLERANCE = 100  # frames, as nnet3-get-egs --length-tolerance


@dataclass
class IvectorSource:
    """A Kaldi online i-vector dir: ``ivector_online.scp`` (one row per ``ivector_period`` frames)."""

    path: Path
    table: object
    period: int
    dim: int

    @classmethod
    def open(cls, path: str | os.PathLike) -> IvectorSource:
        path = Path(path)
        scp = path / "ivector_online.scp"
        if not scp.is_file():
            raise BabelflowError(f"{path}: not an online i-vector dir (no ivector_online.scp)")
        try:
            period = int(read_scalar(path / "ivector_period"))
        except ValueError:
            raise BabelflowError(f"{path}/ivector_period: not an integer") from None
        table = kaldiio.load_scp(str(scp))
        first = next(iter(table), None)
        if first is None:
            raise BabelflowError(f"{scp}: empty")
        return cls(path, table, period, int(np.asarray(table[first]).shape[1]))

    def rows_for(self, utt: str, num_frames: int, starts: np.ndarray, left_context: int,
                 rng: np.random.Generator) -> np.ndarray | None:
        """One i-vector per chunk as nnet3-get-egs picks it: the row of a random frame in
        [chunk start - left context, that + utterance length - 1] (Kaldi's own range), clamped."""
        if utt not in self.table:
            return None
        m = np.asarray(self.table[utt], np.float32)
        if m.ndim != 2 or m.shape[1] != self.dim:
            raise BabelflowError(f"{self.path / 'ivector_online.scp'}: utterance '{utt}': i-vector dimension "
                                 f"{m.shape[-1] if m.ndim else 0}, the dir's first entry has {self.dim}")
        if abs(m.shape[0] * self.period - num_frames) > IVECTOR_LENGTH_TOLERANCE:
            return None
        first = starts.astype(np.int64) - left_context
        frames = first + rng.integers(0, num_frames, size=len(starts))
        return m[np.clip(frames // self.period, 0, m.shape[0] - 1)]
