"""The feature store that utterance tasks over the same data sets share: their features on disk once.

The demo's utterance tasks (lang, voice, gender, rate) all read every utterance of every language;
stored per task, the same features were on disk four times (47 of the demo's 58 MB of egs). A store
holds each utterance of its data sets once, CMVN applied and in the egs dtype, written as an archive
without examples (:mod:`.format`)::

    store.feats      raw little-endian (rows, feat_dim) of info/feats_dtype
    store.segments   text: <utt> <first-row> <num-rows>
    info/            data_sets, feat_dim, feats_dtype, cmvn_opts, num_rows, num_utts

Each task's egs job draws its examples exactly as before (same archives, held-out lists, seeds), but
its archives' ``.segments`` name rows of the store and it writes no ``.feats``: what the task's
readers gather is byte for byte what per-task storage held, and one job writes the features.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.datadir import read_utt2spk
from ..data.featsdir import FeatsDir
from ..errors import BabelflowError
from ..features import apply_cmvn, parse_cmvn_opts
from ..io import read_info, write_info
from .arks import KaldiArks
from .format import FORMAT_VERSION, ArchiveWriter, PartWriter
from .pending import BATCH_FRAMES

PREFIX = "store"  # store.feats, store.segments (named by options.store_name, under options.STORE_DIR)


def _check_sets(sets: list[tuple[str, Path, Path]], feats_dirs: list[FeatsDir]) -> str:
    """The data sets' one CMVN setting; their features must agree and their utterance ids be unique."""
    owner: dict[str, str] = {}
    opts = None
    for (name, _, _), fd in zip(sets, feats_dirs):
        if fd.cmvn_opts is None:
            raise BabelflowError(f"{fd.path / 'cmvn_opts'}: file not found (a Kaldi data dir does not record "
                                 "the CMVN to apply: write it there)")
        if opts is not None and (fd.cmvn_opts != opts or fd.feat_dim != feats_dirs[0].feat_dim):
            raise BabelflowError(f"feature store: data set '{name}' has other features/CMVN than '{sets[0][0]}'")
        opts = fd.cmvn_opts
        for utt in fd.utts:
            if utt in owner:
                raise BabelflowError(f"feature store: utterance '{utt}' is in data sets '{owner[utt]}' and '{name}'")
            owner[utt] = name
    return opts or ""


def write_store(sets: list[tuple[str, Path, Path]], out_dir: str | os.PathLike, dtype: str,
                progress: bool = True) -> dict:
    """Every utterance of ``sets`` (name, data dir, feats dir) into the store ``out_dir``: CMVN applied
    per speaker and converted to ``dtype`` as an egs job does; files renamed into place, info/ last."""
    out_dir = Path(out_dir)
    feats_dirs = [FeatsDir(f) for _, _, f in sets]
    cmvn_opts = _check_sets(sets, feats_dirs)
    means, variances = parse_cmvn_opts(cmvn_opts)
    feat_dim = feats_dirs[0].feat_dim
    writer = ArchiveWriter(out_dir / PREFIX, feat_dim, dtype, frame_labels=False, examples=False)
    out, arks = PartWriter({"store": writer}), KaldiArks()
    keys: list[str] = []
    feats: list[np.ndarray] = []

    def flush() -> None:
        none = np.zeros(0, np.int32)
        out.write([("store",)] * len(keys), keys, feats, np.zeros(len(keys), np.int64), none, none,
                  classes=np.zeros(0, np.int64))
        keys.clear(), feats.clear()
        arks.release()

    try:
        for (name, data_dir, _), fd in zip(sets, feats_dirs):
            cmvn = fd.cmvn_stats() if means else {}
            utt2spk = read_utt2spk(Path(data_dir) / "utt2spk")
            frames = 0
            for utt, rx in tqdm(fd.feats.items(), desc=f"egs store {name}", unit="utt", disable=not progress,
                                mininterval=2.0):
                m = arks.matrix(rx)
                if means:
                    m = apply_cmvn(np.asarray(m), cmvn[utt2spk[utt]], means, variances)
                keys.append(utt), feats.append(m)
                frames += m.shape[0]
                if frames >= BATCH_FRAMES:
                    flush()
                    frames = 0
            if keys:
                flush()
    except BaseException:
        writer.abort()
        raise
    writer.close()
    info = {"format_version": FORMAT_VERSION, "kind": "feature_store",
            "data_sets": ",".join(n for n, _, _ in sets), "feat_dim": feat_dim, "feats_dtype": dtype,
            "cmvn_opts": cmvn_opts, "num_utts": writer.num_segments, "num_rows": writer.num_rows}
    write_info(out_dir, info)
    return info


@dataclass
class FeatureStore:
    """A store as an egs job reads it: where each utterance's rows are."""

    path: Path

    @cached_property
    def info(self) -> dict[str, str]:
        if not (self.path / "info" / "num_rows").is_file():
            raise BabelflowError(f"{self.path}: not a feature store (no info/num_rows; run `babelflow egs store`)")
        return read_info(self.path)

    @property
    def feats_file(self) -> Path:
        return self.path / f"{PREFIX}.feats"

    @cached_property
    def rows(self) -> dict[str, tuple[int, int]]:
        """Utterance -> (first row, number of rows) in ``store.feats``."""
        out = {}
        with open(self.path / f"{PREFIX}.segments") as f:
            for line in f:
                utt, first, n = line.split()
                out[utt] = (int(first), int(n))
        return out

    @cached_property
    def feats(self) -> np.ndarray:
        dim, dtype = int(self.info["feat_dim"]), np.dtype(self.info["feats_dtype"]).newbyteorder("<")
        rows = int(self.info["num_rows"])
        if os.path.getsize(self.feats_file) != rows * dim * dtype.itemsize:
            raise BabelflowError(f"{self.feats_file}: size disagrees with {self.path}/info (num_rows {rows})")
        return np.memmap(self.feats_file, dtype, "r", shape=(rows, dim)) if rows else np.zeros((0, dim), dtype)

    def check(self, task: str, data_sets: list[str], feat_dim: int, dtype: str, cmvn_opts: str) -> None:
        """The store holds the task's data sets, with its features, dtype and CMVN (else it is stale)."""
        info = self.info
        have = info["data_sets"].split(",")
        want = {"feat_dim": str(feat_dim), "feats_dtype": dtype, "cmvn_opts": cmvn_opts}
        bad = [k for k, v in want.items() if info.get(k) != v]
        if set(data_sets) - set(have) or bad:
            raise BabelflowError(f"task '{task}': feature store {self.path} holds {','.join(have)} "
                                 f"({', '.join(f'{k} {info.get(k)}' for k in want)}), the task wants "
                                 f"{','.join(data_sets)} ({', '.join(f'{k} {v}' for k, v in want.items())})")

    def segment(self, utt: str) -> tuple[int, np.ndarray]:
        """An utterance's first row and its rows (a view of the memory map: nothing is read)."""
        if utt not in self.rows:
            raise BabelflowError(f"{self.path}: utterance '{utt}' is not in the feature store (a stale store)")
        first, n = self.rows[utt]
        return first, self.feats[first:first + n]
