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

Utterance tasks over the same data sets would each store the same features again; they share one
feature store instead (:mod:`.store`, named by the egs dir's ``info/feats_store``): their archives
have no ``P.feats``, and ``P.segments`` give rows of the store's ``store.feats``.

All files of an archive are written under temporary names and renamed together. With
``shuffle_seed`` the example records are written in a seeded random order, as Kaldi's
``get_egs.sh`` shuffles every archive (``nnet3-shuffle-egs``): consecutive examples then
come from many utterances and speakers, so a block of them is a fair minibatch. Only the
16-byte records (and i-vector rows) are held for that, not the features. An egs job hands
the writers batches of utterances (:class:`PartWriter`), converted and written in a few
large calls.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BabelflowError
from ..io import clear_stale_temps

FORMAT_VERSION = "1"
INDEX_DTYPE = np.dtype([("seg", "<i4"), ("t0", "<i4"), ("n", "<i4"), ("label", "<i8")])
LABEL_DTYPE = np.dtype([("pdf", "<i4"), ("weight", "<f4")])
ARCHIVE_FILES = ("feats", "segments", "index", "labels", "ivector")
LITTLE_ENDIAN = sys.byteorder == "little"
HALF_BLOCK = 1 << 18  # values converted to float16 at a time


class ArchiveWriter:
    """Streams one archive to disk; memory stays O(1) in the archive size."""

    def __init__(self, prefix: str | os.PathLike, feat_dim: int, dtype: str = "float16",
                 frame_labels: bool = True, ivector_dim: int = 0, shuffle_seed: int | None = None,
                 features: bool = True, examples: bool = True, sort_window: int = 0):
        """``features=False``: the rows live in a shared store (:mod:`.store`), segments name their
        rows there (:meth:`add_stored`); ``examples=False``: a store itself, features and segments only;
        ``sort_window``: see :func:`sort_by_length`."""
        self.prefix = Path(prefix)
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self.feat_dim, self.dtype = feat_dim, np.dtype(dtype)
        self.frame_labels, self.ivector_dim = frame_labels, ivector_dim
        names = ((["feats"] if features else []) + ["segments"] + (["index"] if examples else [])
                 + (["labels"] if frame_labels else []) + (["ivector"] if ivector_dim else []))
        self._final = {n: Path(f"{self.prefix}.{n}") for n in names}
        for f in self._final.values():
            clear_stale_temps(f)
        self._tmp = {n: p.with_name(f".{p.name}.{os.getpid()}.tmp") for n, p in self._final.items()}
        self._files = {n: open(p, "w" if n == "segments" else "wb") for n, p in self._tmp.items()}
        self.num_rows = self.num_segments = self.num_examples = self.num_label_frames = 0
        self.shuffle_seed, self.sort_window = shuffle_seed, sort_window
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

    def add_batch(self, keys: list[str], lengths: np.ndarray, rows: list[np.ndarray], counts: np.ndarray,
                  t0: np.ndarray, n: np.ndarray, labels=None, classes=None, ivectors: np.ndarray | None = None) -> None:
        """Many segments and their examples at once, as :meth:`add_segment` then :meth:`add_examples`
        for each would write them (byte for byte), in a few large writes: segment ``i`` has
        ``lengths[i]`` rows (``rows``: the segments' rows, in pieces of any size, of the archive's
        dtype) and ``counts[i]`` consecutive examples of ``t0``/``n`` (``labels``, ``classes``,
        ``ivectors``)."""
        if not keys:
            return
        for piece in rows:
            if piece.shape[1:] != (self.feat_dim,) or piece.dtype != self.dtype:
                raise BabelflowError(f"{self.prefix}: rows of shape {piece.shape}, dtype {piece.dtype}, expected "
                                     f"(*, {self.feat_dim}) of {self.dtype}")
            self._files["feats"].write(np.ascontiguousarray(piece).reshape(-1).view(np.uint8))
        first = self.num_rows + np.cumsum(lengths) - lengths
        self.add_stored(keys, first, lengths, counts, t0, n, labels, classes, ivectors)

    def add_stored(self, keys: list[str], first: np.ndarray, lengths: np.ndarray, counts: np.ndarray,
                   t0: np.ndarray, n: np.ndarray, labels=None, classes=None,
                   ivectors: np.ndarray | None = None) -> None:
        """Segments whose rows are ``first[i]:first[i] + lengths[i]`` of the feature store (or of this
        archive, from :meth:`add_batch`), and their examples, as :meth:`add_batch` takes them."""
        if not keys:
            return
        lines = (f"{k} {f} {m}\n" for k, f, m in zip(keys, np.asarray(first).tolist(), lengths.tolist()))
        self._files["segments"].write("".join(lines))
        self.num_rows += int(np.sum(lengths))
        rec = np.empty(len(t0), INDEX_DTYPE)
        rec["seg"] = self.num_segments + np.repeat(np.arange(len(keys), dtype=np.int32), counts)
        rec["t0"], rec["n"] = t0, n
        self.num_segments += len(keys)
        self._add_records(rec, np.asarray(n, np.int32), labels, classes, ivectors)

    def add_examples(self, seg: int, t0: np.ndarray, n: np.ndarray, labels=None, classes=None,
                     ivectors: np.ndarray | None = None) -> None:
        """Examples of one segment: frame tasks pass ``labels`` (LABEL_DTYPE, sum(n) records
        in example order); utterance tasks pass one class id per example."""
        t0, n = np.asarray(t0, np.int32), np.asarray(n, np.int32)
        rec = np.empty(len(t0), INDEX_DTYPE)
        rec["seg"], rec["t0"], rec["n"] = seg, t0, n
        self._add_records(rec, n, labels, classes, ivectors)

    def _add_records(self, rec: np.ndarray, n: np.ndarray, labels, classes, ivectors) -> None:
        if self.frame_labels:
            labels = np.asarray(labels, LABEL_DTYPE)
            if len(labels) != int(n.sum()):
                raise BabelflowError(f"{self.prefix}: {len(labels)} labels for {int(n.sum())} output frames")
            rec["label"] = self.num_label_frames + np.cumsum(n, dtype=np.int64) - n
            self._files["labels"].write(labels.tobytes())
            self.num_label_frames += len(labels)
        else:
            rec["label"] = classes
        ivec = np.asarray(ivectors, "<f4").reshape(len(rec), self.ivector_dim) if self.ivector_dim else None
        if self.shuffle_seed is not None:
            self._held.append((rec, ivec))
        else:
            self._write_records(rec, ivec)
        self.num_examples += len(rec)

    def _write_records(self, rec: np.ndarray, ivec: np.ndarray | None) -> None:
        if "index" not in self._files:  # a feature store: no examples
            return
        self._files["index"].write(rec.tobytes())
        if ivec is not None:
            self._files["ivector"].write(ivec.tobytes())

    def close(self) -> None:
        if self._held:
            rec = np.concatenate([r for r, _ in self._held])
            order = sort_by_length(np.random.default_rng(self.shuffle_seed).permutation(len(rec)), rec["n"],
                                   self.sort_window)
            ivec = np.concatenate([v for _, v in self._held])[order] if self.ivector_dim else None
            self._write_records(rec[order], ivec)
            self._held = []
        for f in self._files.values():
            f.close()
        for name, tmp in self._tmp.items():
            # renamed over the old file: a reader sees the old archive or the new one, never none, and ext4
            # (auto_da_alloc) writes the new data out first, so a crash cannot leave an empty archive; that
            # costs 30-60 ms per archive when an old one is replaced (the bench), not when Snakemake reruns
            os.replace(tmp, self._final[name])
        if "feats" not in self._final:  # the rows are in the store: a .feats left by per-task storage is stale
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.prefix}.feats")

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


def sort_by_length(order: np.ndarray, n: np.ndarray, window: int) -> np.ndarray:
    """``order`` (a shuffle) with each run of ``window`` consecutive examples sorted by length ``n[order]``.

    A block of whole utterances is padded to its longest; drawn from a plain shuffle, half of a
    demo block was padding, which the trunk and the pooling compute all the same. Sorted within
    windows, consecutive examples — what a block takes — have similar lengths, while which
    utterances meet in a window stays random (Kaldi's xvector egs go further: one chunk length
    per archive). Ties keep the shuffle's order; ``window`` 0 (or frame tasks' equal lengths)
    leaves it as it is."""
    if window <= 1:
        return order
    out = order.copy()
    for i in range(0, len(order), window):
        w = order[i:i + window]
        out[i:i + window] = w[np.argsort(n[w], kind="stable")]
    return out


class PartWriter:
    """Batches of segments to the archives of their parts (train, valid, ...): each batch's features
    concatenated and converted to the archive dtype once, in buffers kept from batch to batch, and
    written to each part's archive in as few pieces as its segments make runs in the batch."""

    def __init__(self, writers: dict[str, ArchiveWriter]):
        self.writers = writers
        self.dtype = next(iter(writers.values())).dtype
        self._buffers: dict[str, np.ndarray] = {}

    def _buffer(self, name: str, size: int, dtype) -> np.ndarray:
        buf = self._buffers.get(name)
        if buf is None or len(buf) < size:
            buf = self._buffers[name] = np.empty(size + size // 8, dtype)  # batches vary by an utterance
        return buf[:size]

    def rows(self, feats: list[np.ndarray]) -> np.ndarray:
        """The segments' rows, concatenated, in the archive dtype (valid until the next call)."""
        total, dim = sum(m.shape[0] for m in feats), feats[0].shape[1]
        if self.dtype == np.float16 and LITTLE_ENDIAN and all(m.dtype == np.float32 for m in feats):
            x = self._buffer("f32", total * dim, np.uint32)
            np.concatenate([m.reshape(-1).view(np.uint32) for m in feats], out=x)
            out = self._buffer("out", total * dim, np.uint16)
            block = min(len(x), HALF_BLOCK) or 1  # the scratch stays in cache, and small
            scratch = (self._buffer("a", block, np.uint32), self._buffer("t", block, np.uint32),
                       self._buffer("bad", block, np.bool_))
            for i in range(0, len(x), block):
                j = min(i + block, len(x))
                _float_to_half(x[i:j], out[i:j], *(b[:j - i] for b in scratch))
            return out.view("<f2").reshape(total, dim)
        return np.concatenate(feats, dtype=self.dtype.newbyteorder("<"))

    def write(self, parts: list[tuple[str, ...]], keys: list[str], feats: list[np.ndarray], counts: np.ndarray,
              t0: np.ndarray, n: np.ndarray, labels=None, classes=None, ivectors: np.ndarray | None = None) -> None:
        """Segments ``keys`` (features ``feats``, ``counts`` examples each; ``labels``: (examples, frames)
        records, frame tasks) to the writers of their ``parts``."""
        lengths = np.array([m.shape[0] for m in feats], np.int64)
        rows = self.rows(feats)
        first = np.zeros(len(keys) + 1, np.int64)
        np.cumsum(lengths, out=first[1:])
        seg = np.repeat(np.arange(len(keys)), counts)
        for part, writer in self.writers.items():
            mine = np.array([part in p for p in parts])
            if not mine.any():
                continue
            ex = slice(None) if mine.all() else mine[seg]
            edges = np.flatnonzero(np.diff(np.concatenate([[0], mine.view(np.int8), [0]])))  # runs of segments
            pieces = [rows[first[a]:first[b]] for a, b in zip(edges[::2].tolist(), edges[1::2].tolist())]
            writer.add_batch([k for k, m in zip(keys, mine) if m], lengths[mine], pieces, counts[mine], t0[ex], n[ex],
                             labels=None if labels is None else labels[ex].reshape(-1),
                             classes=None if classes is None else classes[ex],
                             ivectors=None if ivectors is None else ivectors[ex])


    def write_stored(self, parts: list[tuple[str, ...]], keys: list[str], first: np.ndarray, lengths: np.ndarray,
                     counts: np.ndarray, t0: np.ndarray, n: np.ndarray, classes=None,
                     ivectors: np.ndarray | None = None) -> None:
        """As :meth:`write`, for segments already in the feature store (rows ``first``, ``lengths``)."""
        seg = np.repeat(np.arange(len(keys)), counts)
        for part, writer in self.writers.items():
            mine = np.array([part in p for p in parts])
            if mine.any():
                ex = mine[seg]
                writer.add_stored([k for k, m in zip(keys, mine) if m], first[mine], lengths[mine], counts[mine],
                                  t0[ex], n[ex], classes=None if classes is None else classes[ex],
                                  ivectors=None if ivectors is None else ivectors[ex])


def _float_to_half(x: np.ndarray, out: np.ndarray, a: np.ndarray, t: np.ndarray, bad: np.ndarray) -> None:
    """float32 (bits ``x``, uint32) -> float16 (bits ``out``, uint16) exactly as numpy casts (round to
    nearest even), in a few integer passes that vectorise (numpy's cast is a scalar loop, 2x slower):
    results in the normal float16 range are rounded and rebiased; the rest (zero, subnormal,
    overflow, inf, nan) go through numpy's cast. Checked against it on all 2**32 float32 values."""
    np.bitwise_and(x, 0x7FFFFFFF, out=a)  # |x|
    np.subtract(a, 0x38800000, out=t)  # wraps below 2**-14, the least normal float16
    np.greater_equal(t, 0x477FF000 - 0x38800000, out=bad)  # ... and from 65520 up (rounds to inf): numpy's cast
    np.right_shift(a, 13, out=t)
    np.bitwise_and(t, 1, out=t)
    np.add(a, t, out=a)
    np.add(a, 0xC8000FFF, out=a)  # + 0xfff (+ the kept bit: ties to even) - (127 - 15) << 23 (exponent bias)
    np.right_shift(a, 13, out=a)
    np.right_shift(x, 16, out=t)
    np.bitwise_and(t, 0x8000, out=t)  # sign
    np.bitwise_or(a, t, out=a)
    np.copyto(out, a, casting="unsafe")
    idx = np.flatnonzero(bad)
    if len(idx):
        out[idx] = x[idx].view(np.float32).astype(np.float16).view(np.uint16)


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
             ivector_dim: int = 0, store: str | os.PathLike | None = None) -> Archive:
        """``store``: the feature store's ``.feats`` file the segments' rows are in (else ``prefix.feats``)."""
        prefix = Path(prefix)
        try:
            keys, starts, lens = [], [], []
            lines = Path(f"{prefix}.segments").read_text().splitlines()
            for n, line in enumerate(lines, 1):  # noqa: B007 (n names the line in the error below)
                k, s, m = line.split()
                keys.append(k), starts.append(int(s)), lens.append(int(m))
            index = np.fromfile(f"{prefix}.index", INDEX_DTYPE)
            feats_file = Path(store or f"{prefix}.feats")
            nbytes = os.path.getsize(feats_file)
        except FileNotFoundError as e:
            raise BabelflowError(f"{prefix}: archive incomplete: {e.filename} missing") from None
        except ValueError:
            raise BabelflowError(f"{prefix}.segments:{n}: expected '<key> <first-row> <num-rows>'") from None
        itemsize = np.dtype(dtype).itemsize * feat_dim
        rows = int(sum(lens))
        if store is not None:  # segments name rows of the store, which must hold them all
            rows = nbytes // itemsize
            if nbytes % itemsize or any(s + m > rows for s, m in zip(starts, lens)):
                raise BabelflowError(f"{feats_file}: {nbytes} bytes ({rows} rows of {feat_dim} x {dtype}) do not "
                                     f"hold the rows {prefix}.segments names: a stale feature store")
        elif nbytes != rows * itemsize:
            raise BabelflowError(f"{prefix}.feats: {nbytes} bytes, but {prefix}.segments describes {rows} rows "
                                 f"of {feat_dim} x {dtype} ({rows * itemsize} bytes): info/ disagrees with the archive")
        feats = np.memmap(feats_file, dtype=np.dtype(dtype).newbyteorder("<"), mode="r",
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
