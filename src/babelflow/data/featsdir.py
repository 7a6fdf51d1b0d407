"""Reading a features dir: ``exp/feats/<set>/`` as ``babelflow features`` writes it, or a
Kaldi data dir with features adopted as one.

A features dir (:mod:`babelflow.make_feats`) holds ``feats.scp``, ``utt2num_frames``,
``cmvn.{ark,scp}``, ``cmvn_opts``, ``conf/<type>.conf`` and ``info/`` (``feat_type``,
``feat_dim``, ...); a missing file is an error naming it.

A Kaldi data dir after ``make_mfcc.sh`` + ``compute_cmvn_stats.sh`` (e.g.
``data/<set>/train_hires``: ``feats.scp``, ``cmvn.scp``, no ``info/``) is *adopted*: it
must have ``feats.scp`` and ``cmvn.scp``; ``feat_dim`` comes from ``info/feat_dim`` or
else the first matrix, ``utt2num_frames`` from its file or else the matrices' shapes,
and an absent ``cmvn_opts`` / ``info/feat_type`` is ``None``.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import kaldiio
import numpy as np

from ..errors import BabelflowError, where
from ..io import read_info, read_table


class FeatsDir:
    """A features dir; ``adopt=None`` adopts a dir without ``info/`` as a Kaldi data dir."""

    def __init__(self, path: str | os.PathLike, adopt: bool | None = None):
        self.path = Path(path)
        if not self.path.is_dir():
            raise BabelflowError(f"{self.path}: no such features dir")
        self.adopted = not (self.path / "info").is_dir() if adopt is None else adopt
        self._require(self.feats_scp)
        if self.adopted:
            self._require(self.cmvn_scp, " (a Kaldi data dir needs compute_cmvn_stats.sh to be used)")

    @staticmethod
    def _require(path: Path, hint: str = "") -> Path:
        if not path.is_file():
            raise BabelflowError(f"{path}: file not found{hint}")
        return path

    @property
    def feats_scp(self) -> Path:
        return self.path / "feats.scp"

    @property
    def cmvn_scp(self) -> Path:
        return self.path / "cmvn.scp"

    @property
    def conf_dir(self) -> Path | None:
        """``conf/`` (the feature options in Kaldi conf format), None when absent."""
        conf = self.path / "conf"
        return conf if conf.is_dir() else None

    @cached_property
    def info(self) -> dict[str, str]:
        return read_info(self.path)

    def _info(self, name: str) -> str | None:
        """``info/<name>``; missing: None for an adopted dir, else an error naming the file."""
        if name in self.info:
            return self.info[name]
        if self.adopted:
            return None
        raise BabelflowError(f"{self.path / 'info' / name}: file not found")

    @cached_property
    def feats(self) -> dict[str, str]:
        """feats.scp as {utterance: rxfilename}, in file order."""
        return {u: rx[0] for _, u, rx in read_table(self.feats_scp, 2, 2)}

    @property
    def utts(self) -> list[str]:
        """Utterances in feats.scp order."""
        return list(self.feats)

    def load(self, utt: str, handles: dict | None = None) -> np.ndarray:
        """The feature matrix of ``utt``; ``handles`` (a dict kept by the caller) keeps archives open across
        calls, so reading a whole dir does not reopen its ark for every utterance."""
        if utt not in self.feats:
            raise BabelflowError(f"{self.feats_scp}: no utterance '{utt}'")
        return kaldiio.load_mat(self.feats[utt], fd_dict=handles)

    @cached_property
    def feat_dim(self) -> int:
        value = self._info("feat_dim")
        if value is None:
            if not self.feats:
                raise BabelflowError(f"{self.feats_scp}: empty")
            return int(self.load(next(iter(self.feats))).shape[1])
        try:
            return int(value)
        except ValueError:
            raise BabelflowError(f"{self.path / 'info' / 'feat_dim'}: '{value}' is not an integer") from None

    @property
    def feat_type(self) -> str | None:
        """``fbank``, ``mfcc``, ... (None for an adopted Kaldi data dir that does not say)."""
        return self._info("feat_type")

    @cached_property
    def cmvn_opts(self) -> str | None:
        """The CMVN options egs apply (``cmvn_opts``; None for an adopted dir without one)."""
        path = self.path / "cmvn_opts"
        if path.is_file():
            return path.read_text().strip()
        if self.adopted:
            return None
        raise BabelflowError(f"{path}: file not found")

    @cached_property
    def utt2num_frames(self) -> dict[str, int]:
        """{utterance: frames}: ``utt2num_frames``, or for an adopted dir without it the matrices' rows."""
        path = self.path / "utt2num_frames"
        if not path.is_file():
            if not self.adopted:
                raise BabelflowError(f"{path}: file not found")
            try:
                return {u: int(m.shape[0]) for u, m in kaldiio.load_scp_sequential(str(self.feats_scp))}
            except (OSError, ValueError, EOFError) as e:
                raise BabelflowError(f"{self.feats_scp}: cannot read the matrices ({e})") from None
        out = {}
        for n, u, (v,) in read_table(path, 2, 2):
            try:
                out[u] = int(v)
            except ValueError:
                raise BabelflowError(f"{where(path, n, u)}: '{v}' is not an integer") from None
        return out

    def cmvn_stats(self) -> dict[str, np.ndarray]:
        """cmvn.scp loaded: {speaker (or utterance): Kaldi's 2 x (dim+1) stats}."""
        self._require(self.cmvn_scp)
        return dict(kaldiio.load_scp(str(self.cmvn_scp)))
