"""The on-disk egs layout: features stored once, examples as an index into them.

Kaldi's egs store every example's input with its context (8 output frames need 36
input rows with context 16/12: 4.5x the features), then compress to 1 byte per value to
cope. Here each archive stores the (CMVN-applied) frames of its utterances once, and an
example is a row of a fixed-dtype index: (segment, first output frame, #frames, label).
Context is sliced at read time, with Kaldi's edge padding (first/last frame repeated),
so the disk cost is the features themselves (0.5x in float16) plus 8 bytes per labelled
frame, and a minibatch is one vectorised gather from a memory map — no per-example
parsing. Per archive prefix ``P`` (``egs.J``, ``valid.J``, ``train_diagnostic.J``)::

    P.feats     raw little-endian (rows, feat_dim) of info/feats_dtype
    P.segments  text: <segment-key> <first-row> <num-rows>   (an utterance, or an imported eg)
    P.index     raw INDEX_DTYPE, one record per example
    P.labels    raw LABEL_DTYPE, one record per output frame (frame tasks only)
    P.ivector   raw float32 (num_examples, ivector_dim)       (only with i-vectors)

All files of an archive are written under temporary names and renamed together. With
``shuffle_seed`` the example records are written in a seeded random order, as Kaldi's
``get_egs.sh`` shuffles every archive (``nnet3-shuffle-egs``): consecutive examples then
come from many utterances and speakers, so a block of them is a fair minibatch. Only the
16-byte records (and i-vector rows) are held for that, not the features.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BabelflowError

FORMAT_VERSION = "1"
INDEX_DTYPE = np.dtype([("seg", "<i4"), ("t0", "<i4"), ("n", "<i4"), ("label", "<i8")])
LABEL_DTYPE = np.dtype([("pdf", "<i4"), ("weight", "<f4")])
ARCHIVE_FILES = ("feats", "segments", "index", "labels", "ivector")


class ArchiveWriter:
    """Streams one archive to disk; memory stays O(1) in the archive size."""

    def __init__(self, prefix: str | os.PathLike, feat_dim: int, dtype: str = "float16",
                 frame_labels: bool = True, ivector_dim: int = 0, shuffle_seed: int | None = None):
        self.prefix = Path(prefix)
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self.feat_dim, self.dtype = feat_dim, np.dtype(dtype)
        self.frame_labels, self.ivector_dim = frame_labels, ivector_dim
        names = (["feats", "segments", "index"] + (["labels"] if frame_labels else [])
                 + (["ivector"] if ivector_dim else []))
        self._final = {n: Path(f"{self.prefix}.{n}") for n in names}
        self._tmp = {n: p.with_name(f".{p.name}.{os.getpid()}.tmp") for n, p in self._final.items()}
        self._files = {n: open(p, "w" if n == "segments" else "wb") for n, p in self._tmp.items()}
        self.num_rows = self.num_segments = self.num_examples = self.num_label_frames = 0
        self.shuffle_seed = shuffle_seed
        self._held: list[tuple[np.ndarray, np.ndarray | None]] = []  # (records, ivectors) when shuffling

    def add_segment(self, key: str, feats: np.ndarray) -> int:
        """Append a segment's frames; returns its id for :meth:`add_examples`."""
        if feats.ndim != 2 or feats.shape[1] != self.feat_dim:
            raise BabelflowError(f"{self.prefix}: segment '{key}' has shape {feats.shape}, "
                                 f"expected (*, {self.feat_dim})")
        self._files["feats"].write(np.ascontiguousarray(feats, dtype=self.dtype.newbyteorder("<")).tobytes())
        self._files["segments"].write(f"{key} {self.num_rows} {feats.shape[0]}\n")
        self.num_rows += feats.shape[0]
        self.num_segments += 1
        return self.num_segments - 1

    def add_examples(self, seg: int, t0: np.ndarray, n: np.ndarray, labels=None, classes=None,
                     ivectors: np.ndarray | None = None) -> None:
        """Examples of one segment: frame tasks pass ``labels`` (LABEL_DTYPE, sum(n) records
        in example order); utterance tasks pass one class id per example."""
        t0, n = np.asarray(t0, np.int32), np.asarray(n, np.int32)
        rec = np.empty(len(t0), INDEX_DTYPE)
        rec["seg"], rec["t0"], rec["n"] = seg, t0, n
        if self.frame_labels:
            labels = np.asarray(labels, LABEL_DTYPE)
            if len(labels) != int(n.sum()):
                raise BabelflowError(f"{self.prefix}: {len(labels)} labels for {int(n.sum())} output frames")
            rec["label"] = self.num_label_frames + np.concatenate([[0], np.cumsum(n[:-1], dtype=np.int64)])
            self._files["labels"].write(labels.tobytes())
            self.num_label_frames += len(labels)
        else:
            rec["label"] = classes
        ivec = np.asarray(ivectors, "<f4").reshape(len(t0), self.ivector_dim) if self.ivector_dim else None
        if self.shuffle_seed is not None:
            self._held.append((rec, ivec))
        else:
            self._write_records(rec, ivec)
        self.num_examples += len(t0)

    def _write_records(self, rec: np.ndarray, ivec: np.ndarray | None) -> None:
        self._files["index"].write(rec.tobytes())
        if ivec is not None:
            self._files["ivector"].write(ivec.tobytes())

    def close(self) -> None:
        if self._held:
            rec = np.concatenate([r for r, _ in self._held])
            order = np.random.default_rng(self.shuffle_seed).permutation(len(rec))
            ivec = np.concatenate([v for _, v in self._held])[order] if self.ivector_dim else None
            self._write_records(rec[order], ivec)
            self._held = []
        for f in self._files.values():
            f.close()
        for name, tmp in self._tmp.items():
            os.replace(tmp, self._final[name])

    def abort(self) -> None:
        for f in self._files.values():
            f.close()
        for tmp in self._tmp.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.abort() if exc_type else self.close()


@dataclass
class Archive:
    """A read-only view of one archive (memory-mapped)."""

    prefix: Path
    feats: np.ndarray
    seg_keys: list[str]
    seg_start: np.ndarray
    seg_len: np.ndarray
    index: np.ndarray
    labels: np.ndarray | None
    ivector: np.ndarray | None

    @classmethod
    def open(cls, prefix: str | os.PathLike, feat_dim: int, dtype: str, frame_labels: bool,
             ivector_dim: int = 0) -> Archive:
        prefix = Path(prefix)
        try:
            keys, starts, lens = [], [], []
            lines = Path(f"{prefix}.segments").read_text().splitlines()
            for n, line in enumerate(lines, 1):  # noqa: B007 (n names the line in the error below)
                k, s, m = line.split()
                keys.append(k), starts.append(int(s)), lens.append(int(m))
            index = np.fromfile(f"{prefix}.index", INDEX_DTYPE)
            nbytes = os.path.getsize(f"{prefix}.feats")
        except FileNotFoundError as e:
            raise BabelflowError(f"{prefix}: archive incomplete: {e.filename} missing") from None
        except ValueError:
            raise BabelflowError(f"{prefix}.segments:{n}: expected '<key> <first-row> <num-rows>'") from None
        itemsize = np.dtype(dtype).itemsize * feat_dim
        rows = int(sum(lens))
        if nbytes != rows * itemsize:
            raise BabelflowError(f"{prefix}.feats: {nbytes} bytes, but {prefix}.segments describes {rows} rows "
                                 f"of {feat_dim} x {dtype} ({rows * itemsize} bytes): info/ disagrees with the archive")
        feats = np.memmap(f"{prefix}.feats", dtype=np.dtype(dtype).newbyteorder("<"), mode="r",
                          shape=(rows, feat_dim)) if rows else np.zeros((0, feat_dim), dtype)
        labels = np.fromfile(f"{prefix}.labels", LABEL_DTYPE) if frame_labels else None
        ivec = (np.fromfile(f"{prefix}.ivector", "<f4").reshape(-1, ivector_dim) if ivector_dim else None)
        arch = cls(prefix, feats, keys, np.asarray(starts, np.int64), np.asarray(lens, np.int64), index, labels, ivec)
        arch.check()
        return arch

    def check(self) -> None:
        """Cheap consistency checks so a corrupt archive fails on open, not mid-training."""
        idx = self.index
        if len(idx) == 0:
            return
        if idx["seg"].min() < 0 or idx["seg"].max() >= len(self.seg_keys):
            raise BabelflowError(f"{self.prefix}.index: segment id out of range")
        if (idx["t0"] < 0).any() or (idx["t0"] + idx["n"] > self.seg_len[idx["seg"]]).any():
            raise BabelflowError(f"{self.prefix}.index: an example reaches outside its segment")
        if self.labels is not None and int((idx["label"] + idx["n"]).max()) != len(self.labels):
            raise BabelflowError(f"{self.prefix}.labels: {len(self.labels)} records, index expects "
                                 f"{int((idx['label'] + idx['n']).max())}")

    def __len__(self) -> int:
        return len(self.index)

    def inputs(self, ids: np.ndarray, left_context: int, right_context: int, dtype=np.float32) -> np.ndarray:
        """(B, lc + n + rc, dim) inputs of examples with equal n, edges padded as Kaldi."""
        rec = self.index[ids]
        if (rec["n"] != rec["n"][0]).any():
            raise ValueError("inputs(): examples of different lengths in one call; use inputs_padded()")
        return self.inputs_padded(ids, left_context, right_context, dtype)[0]

    def inputs_padded(self, ids: np.ndarray, left_context: int, right_context: int,
                      dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        """Inputs of examples of any lengths, padded to the longest: (B, lc + max n + rc, dim)
        and the lengths n. Rows outside a segment repeat its first/last frame (Kaldi's padding);
        a shorter example continues into its segment's following frames."""
        rec = self.index[ids]
        n = rec["n"]
        offs = np.arange(-left_context, int(n.max()) + right_context)
        rows = np.clip(rec["t0"][:, None] + offs[None, :], 0, self.seg_len[rec["seg"]][:, None] - 1)
        rows += self.seg_start[rec["seg"]][:, None]
        x = self.feats[rows.ravel()].reshape(len(ids), len(offs), -1)
        return (x if dtype is None else np.asarray(x, dtype=dtype)), n.astype(np.int64)

    def frame_targets(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pdf, weight) arrays of shape (B, n) for frame-task examples of equal n."""
        rec = self.index[ids]
        pos = rec["label"][:, None] + np.arange(int(rec["n"][0]))[None, :]
        lab = self.labels[pos]
        return lab["pdf"], lab["weight"]

    def key(self, i: int, key_format: str) -> str:
        rec = self.index[i]
        seg = self.seg_keys[rec["seg"]]
        return seg if key_format == "segment" else f"{seg}-{rec['t0']}"
