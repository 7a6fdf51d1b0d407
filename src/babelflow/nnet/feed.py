"""Feeding blocks to the trainer without stalling a GPU.

:meth:`MergedSchedule.load` gathers a block from the archives' memory maps on the host and
copies it over: on a GPU that host work and the copy sit between every two steps (issue 15
measured 0.60x the step rate of tensors already on an H200, at Kaldi's 256 x 8-frame minibatch).
:class:`ResidentFeed` uploads each archive once — its features in their stored dtype
(float16: half of float32), its index and labels — and gathers every block on the device
with the same arithmetic as :meth:`Archive.inputs_padded` (Kaldi's edge padding), so a
block is a few kernel launches and no host copy. The only host work per block is reading
the block's example lengths from the host index (to size the gather). Batches are equal to
``load``'s, value for value (the float16 -> float32 conversion is exact), so the model
trained is the same.

:class:`Prefetcher` is the fallback when the features do not fit: a background thread
loads the next blocks (pinned, copied asynchronously) while the device runs this one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..egs.format import Archive
from ..errors import BabelflowError
from .data import Batch, Block, MergedSchedule

__all__ = ["HostFeed", "Prefetcher", "ResidentFeed", "make_feed", "resident_bytes"]

PARTS = ("train", "valid", "train_diagnostic")  # what training reads


@dataclass
class _DeviceArchive:
    """One archive on the device; ``feats`` may be shared with other archives (a feature store)."""

    feats: torch.Tensor  # (rows, dim), stored dtype
    seg_start: torch.Tensor  # per example: first row of its segment
    seg_last: torch.Tensor  # per example: last row index within its segment (seg_len - 1)
    t0: torch.Tensor
    n: torch.Tensor
    label: torch.Tensor  # frame tasks: offset into pdf/weight; utterance tasks: the class
    pdf: torch.Tensor | None
    weight: torch.Tensor | None
    ivector: torch.Tensor | None
    host_n: np.ndarray  # example lengths on the host: sizes each gather without a device read


def resident_bytes(schedule: MergedSchedule, parts: Iterable[str], tasks: set[int] | None = None) -> int:
    """Bytes :class:`ResidentFeed` uploads for ``parts`` (features once per file; per example five
    int64 columns, per labelled frame an int64 pdf and a float32 weight, i-vectors as stored)."""
    seen, total = set(), 0
    for _, arch in _archives(schedule, parts, tasks):
        if _feats_name(arch) not in seen:
            seen.add(_feats_name(arch))
            total += arch.feats.nbytes
        total += 40 * len(arch.index) + (12 * len(arch.labels) if arch.labels is not None else 0)
        total += arch.ivector.nbytes if arch.ivector is not None else 0
    return total


def _archives(schedule: MergedSchedule, parts: Iterable[str], tasks: set[int] | None = None
              ) -> Iterator[tuple[tuple[int, str, int], Archive]]:
    """The archives the schedule's blocks of ``parts`` (of ``tasks``, default all) read, keyed (task, part, number)."""
    for part in parts:
        used = {(b.task, p.archive) for blocks in schedule.blocks(part) for b in blocks for p in b.pieces
                if tasks is None or b.task in tasks}
        for task, number in sorted(used):
            yield (task, part, number), schedule.merged.archive(task, part, number)


def _feats_name(arch: Archive) -> object:
    """What identifies an archive's feature rows: the file (a feature store is shared), else the array."""
    return getattr(arch.feats, "filename", None) or id(arch.feats)


class ResidentFeed:
    """Every archive of ``parts`` on ``device``; :meth:`load` is :meth:`MergedSchedule.load` done there."""

    def __init__(self, schedule: MergedSchedule, device: str | torch.device,
                 parts: Iterable[str] = PARTS, tasks: set[int] | None = None):
        """``parts``, ``tasks`` (default all): the archives to upload (:meth:`load` of others fails)."""
        self.schedule, self.device = schedule, torch.device(device)
        self.parts = tuple(parts)
        feats: dict[object, torch.Tensor] = {}
        self._archives: dict[tuple[int, str, int], _DeviceArchive] = {}
        for key, arch in _archives(schedule, self.parts, tasks):
            name = _feats_name(arch)
            if name not in feats:  # a shared feature store goes up once
                feats[name] = self._put(arch.feats)
            self._archives[key] = self._upload(arch, feats[name])

    def _put(self, a: np.ndarray, rows_per_copy: int = 1 << 20) -> torch.Tensor:
        """A copy of ``a`` on the device, in slices: a memory map is read-only, and a whole copy of
        a feature store on the host first would take as much RAM as the store."""
        out = torch.empty(a.shape, dtype=torch.from_numpy(a[:0].copy()).dtype, device=self.device)
        for i in range(0, len(a), rows_per_copy):
            out[i:i + rows_per_copy] = torch.from_numpy(np.array(a[i:i + rows_per_copy]))
        return out

    def _upload(self, arch: Archive, feats: torch.Tensor) -> _DeviceArchive:
        rec = arch.index
        seg = rec["seg"].astype(np.int64)
        pdf = weight = None
        if arch.labels is not None:
            pdf, weight = self._put(arch.labels["pdf"].astype(np.int64)), self._put(arch.labels["weight"])
        return _DeviceArchive(
            feats=feats, seg_start=self._put(arch.seg_start[seg]), seg_last=self._put(arch.seg_len[seg] - 1),
            t0=self._put(rec["t0"].astype(np.int64)), n=self._put(rec["n"].astype(np.int64)),
            label=self._put(rec["label"].astype(np.int64)), pdf=pdf, weight=weight,
            ivector=None if arch.ivector is None else self._put(arch.ivector), host_n=rec["n"].copy())

    def load(self, block: Block, part: str = "train") -> Batch:
        """The block as :meth:`MergedSchedule.load` returns it, gathered on the device."""
        sch = self.schedule
        frame = sch.egs[block.task].kind == "frame"
        lc, rc = sch.left_context, sch.right_context
        xs, ivs, tgt, fw, lens = [], [], [], [], []
        for piece in block.pieces:
            sch.merged.piece_archive(block, piece, part)  # checks the piece lies in the archive
            a = self._archives.get((block.task, part, piece.archive))
            if a is None:
                raise BabelflowError(f"{sch.path}: task {block.task}, part {part}: not uploaded to {self.device} "
                                     "(ResidentFeed's parts and tasks)")
            sl = slice(piece.first, piece.first + piece.count)
            n_max = int(a.host_n[sl].max())
            offs = torch.arange(-lc, n_max + rc, device=self.device)
            rows = torch.minimum((a.t0[sl, None] + offs).clamp_min(0), a.seg_last[sl, None]) + a.seg_start[sl, None]
            xs.append(a.feats[rows])
            if a.ivector is not None:
                ivs.append(a.ivector[sl])
            if frame:
                pos = a.label[sl, None] + torch.arange(int(a.host_n[piece.first]), device=self.device)
                tgt.append(a.pdf[pos]), fw.append(a.weight[pos])
            else:
                tgt.append(a.label[sl]), lens.append(a.n[sl])
        if len({x.shape[1] for x in xs}) > 1:  # utterance pieces of other lengths: repeat the last frame
            width = max(x.shape[1] for x in xs)
            xs = [torch.cat([x, x[:, -1:].expand(-1, width - x.shape[1], -1)], 1) for x in xs]
        x = torch.cat(xs).float()
        iv = torch.cat(ivs) if ivs else None
        if frame:
            return Batch(block.task, block.weight, x, iv, torch.cat(tgt), torch.cat(fw), None)
        return Batch(block.task, block.weight, x, iv, torch.cat(tgt), None, torch.cat(lens))

    def iterate(self, blocks: Iterable[Block], part: str = "train") -> Iterator[tuple[Block, Batch]]:
        return ((b, self.load(b, part)) for b in blocks)


class HostFeed:
    """:meth:`MergedSchedule.load` on the host. With ``prefetch`` > 0, :meth:`iterate` reads that many
    blocks ahead in a thread (pinned memory, asynchronous copies when the device is a GPU)."""

    def __init__(self, schedule: MergedSchedule, device: str | torch.device, prefetch: int = 0):
        self.schedule, self.device, self.prefetch = schedule, torch.device(device), prefetch

    def load(self, block: Block, part: str = "train") -> Batch:
        return self.schedule.load(block, part, self.device)

    def iterate(self, blocks: Iterable[Block], part: str = "train") -> Iterator[tuple[Block, Batch]]:
        if not self.prefetch:
            yield from ((b, self.load(b, part)) for b in blocks)
            return
        pin = self.device.type == "cuda"

        def read(b: Block) -> Batch:
            batch = self.schedule.load(b, part, "cpu")
            return batch.map(torch.Tensor.pin_memory) if pin else batch
        pf = Prefetcher(blocks, read, self.prefetch)
        try:
            for blk, batch in pf:
                yield blk, batch.map(lambda t: t.to(self.device, non_blocking=True))
        finally:
            pf.close()


class Prefetcher:
    """Iterates ``load(item)`` over ``items``, ``depth`` items ahead in a background thread.

    numpy's gathers release the GIL, so the next blocks are read while the main thread runs
    the model; an exception in the thread is raised where its item would have come."""

    _END = object()

    def __init__(self, items: Iterable, load: Callable, depth: int = 2):
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iter(items), load), daemon=True)
        self._thread.start()

    def _run(self, items: Iterator, load: Callable) -> None:
        try:
            for item in items:
                if self._stop.is_set():
                    return
                self._q.put((item, load(item), None))
        except BaseException as e:  # noqa: BLE001 (handed to the consumer)
            self._q.put((None, None, e))
        self._q.put(self._END)

    def __iter__(self) -> Iterator:
        while True:
            got = self._q.get()
            if got is self._END:
                return
            item, value, err = got
            if err is not None:
                raise err
            yield item, value

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a put on a full queue
            try:
                self._q.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)



def make_feed(loader: str, schedule: MergedSchedule, device: torch.device, tasks: set[int] | None = None,
              max_fraction: float = 0.5) -> ResidentFeed | HostFeed:
    """The feed ``train.loader`` names. ``auto``: resident on a GPU whose free memory is at least
    1 / ``max_fraction`` times the archives (training needs the rest), else host with prefetching
    on a GPU; on a CPU host (the page cache already keeps the memory maps: an upload would only
    copy them, and a prefetch thread would take a core from the model). ``tasks``: those trained
    (the others' archives stay on the host, unread)."""
    if loader == "auto":
        loader = "host"
        if device.type == "cuda":
            free = torch.cuda.mem_get_info(device)[0]
            loader = "resident" if resident_bytes(schedule, PARTS, tasks) <= max_fraction * free else "host"
    if loader == "resident":
        return ResidentFeed(schedule, device, PARTS, tasks)
    return HostFeed(schedule, device, prefetch=2 if device.type == "cuda" else 0)
