"""The egs step (Kaldi ``steps/nnet3/get_egs.sh``), one task at a time.

Contract: features dirs (+ data dirs, + pdf alignments for frame tasks) -> an egs dir::

    ali_pdf.{ark,scp}  num_pdfs          frame tasks: pdf ids per frame (ali-to-pdf, once)
    egs.J.*  valid.J.*  train_diagnostic.J.*   archive J = (data set, features job) J
    report.J.json                        per-job counts, skips per reason
    info/  cmvn_opts  valid_uttlist  train_subset_uttlist  report.tsv   (finalize)

An utterance task given a feature store (:mod:`.store`, ``TaskSource.store``) draws the same
examples but writes no features: its segments name the store's rows (``info/feats_store``).

Valid utterances are held out of training; the train-diagnostic utterances stay in
training and are also written apart, as Kaldi's ``train_diagnostic.egs``. Every job
derives both lists from the same seeded draw over all of the task's utterances, so jobs
need no coordination.

A job runs at about the speed of copying its features: matrices and alignments are read in
place from the memory-mapped archives (:class:`~.arks.KaldiArks`), each utterance costs
only its random draws, and the rest (chunk starts, labels and weights, the conversion to the
stored dtype, the writes) is done a batch of utterances at a time in a few numpy calls,
with the bytes that writing one utterance at a time gave (``tests/golden`` hashes them).
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.datadir import read_utt2spk
from ..data.featsdir import FeatsDir
from ..errors import BabelflowError
from ..features import apply_cmvn, parse_cmvn_opts
from ..io import read_scalar, read_table, write_info, write_skipped, write_table, write_text
from .arks import KaldiArks
from .chunking import batch_starts, chunk_draw, utterance_chunks
from .format import FORMAT_VERSION, ArchiveWriter
from .ivectors import IvectorSource
from .options import EgsOptions
from .pending import Pending
from .reader import EgsDir
from .store import FeatureStore


@dataclass
class TaskSource:
    """Where one task's examples come from: (data set name, data dir, feats dir) per set."""

    task: str
    kind: str
    sets: list[tuple[str, Path, Path]]
    nj: int
    labels: str | None = None  # utt2<label> file name, utterance tasks
    classes: list[str] | None = None  # fixed label map (optional)
    ivectors: dict[str, Path] | None = None  # data set -> Kaldi online i-vector dir (optional)
    store: Path | None = None  # utterance tasks: the feature store (.store) their segments index into

    def archives(self) -> list[int]:
        """Archive numbers 1..nj (one Snakemake job each)."""
        return list(range(1, self.nj + 1))

    @property
    def seed_name(self) -> str:
        """What seeds the task's draws (held-out lists, archives, chunks, order): for an utterance task, the names
        of its data sets, so that utterance tasks over the same utterances draw the very same examples, with a
        feature store or without (over one store, training runs the trunk once for all of them:
        :mod:`babelflow.nnet.twins`); for a frame task, its name."""
        return "+".join(sorted(name for name, _, _ in self.sets)) if self.kind == "utterance" else self.task


def archive_of_utterances(utts: list[str], nj: int, opts: EgsOptions, seed_name: str) -> dict[str, int]:
    """Utterance -> archive (1..nj), dealt round-robin over a seeded shuffle of all the task's
    utterances. Kaldi sends every eg to a random archive; dealing utterances this way gives
    each archive every data set and speaker (a data split is by speaker, so archives made
    one per split would each hold one gender or one language)."""
    rng = np.random.default_rng([opts.seed, zlib.crc32(seed_name.encode()), 1])
    return {utts[i]: 1 + k % nj for k, i in enumerate(rng.permutation(len(utts)).tolist())}


def held_out_lists(utts: list[str], opts: EgsOptions, task: str, utt2spk: dict[str, str] | None = None,
                   seed_name: str | None = None) -> tuple[set[str], set[str]]:
    """(valid, train_subset) utterance sets, as get_egs.sh draws them (seeded here). With
    ``egs.valid_by: speaker`` (and ``utt2spk``) the valid set is whole speakers, drawn in a seeded order
    until they hold the wanted number of utterances: none of them is seen in training (Kaldi's default,
    utterances, lets the valid set share speakers with training, which flatters a system)."""
    n = len(utts)
    rng = np.random.default_rng([opts.seed, zlib.crc32((seed_name or task).encode())])

    def size(wanted: int) -> int:
        return wanted if n >= 4 * wanted else max(1, int(round(opts.valid_fraction * n)))

    nv = min(size(opts.num_valid_utts), n - 1)
    if opts.valid_by == "speaker":
        valid = _held_out_speakers(utts, utt2spk or {}, nv, rng, task)
        rest = [u for u in utts if u not in valid]
        order = [rest[i] for i in rng.permutation(len(rest)).tolist()]
        return valid, set(order[:min(size(opts.num_train_subset_utts), len(rest))])
    order = [utts[i] for i in rng.permutation(n).tolist()]
    valid = set(order[:nv])
    nt = min(size(opts.num_train_subset_utts), n - nv)
    return valid, set(order[nv:nv + nt])


def _held_out_speakers(utts: list[str], utt2spk: dict[str, str], wanted: int, rng, task: str) -> set[str]:
    missing = [u for u in utts if u not in utt2spk]
    if missing:
        raise BabelflowError(f"task '{task}': egs.valid_by speaker: no speaker for utterance '{missing[0]}'")
    by_spk: dict[str, list[str]] = {}
    for u in utts:
        by_spk.setdefault(utt2spk[u], []).append(u)
    speakers = sorted(by_spk)
    if len(speakers) < 2:
        raise BabelflowError(f"task '{task}': egs.valid_by speaker needs 2 speakers or more, it has {len(speakers)}")
    valid: set[str] = set()
    for i in rng.permutation(len(speakers)).tolist()[:-1]:  # at least one speaker stays for training
        if len(valid) >= wanted:
            break
        valid.update(by_spk[speakers[i]])
    return valid


def task_utt2spk(src: TaskSource) -> dict[str, str]:
    """Utterance -> speaker over the task's data sets (the same speaker label in two sets is one speaker)."""
    from ..data.datadir import read_utt2spk

    return {u: s for _, data, _ in src.sets for u, s in read_utt2spk(Path(data) / "utt2spk").items()}


def task_utterances(src: TaskSource, feats_dirs: list[FeatsDir] | None = None) -> list[str]:
    """All utterances of a task (sorted); utterance ids must be unique across its data sets."""
    owner: dict[str, str] = {}
    for (name, _, _), fd in zip(src.sets, feats_dirs or [FeatsDir(f) for _, _, f in src.sets]):
        for utt in fd.utts:
            if utt in owner:
                raise BabelflowError(f"task '{src.task}': utterance '{utt}' is in data sets '{owner[utt]}' and "
                                     f"'{name}'; prefix utterance ids with the data set (as Kaldi's chain2 does)")
            owner[utt] = name
    return sorted(owner)


def class_map(src: TaskSource) -> list[str]:
    if src.classes:
        return list(src.classes)
    labels = set()
    for _, data, _ in src.sets:
        labels |= {v[0] for _, _, v in read_table(data / src.labels, 2, 2)}
    return sorted(labels)


@dataclass
class _Counts:
    utts: int = 0
    frames: int = 0
    examples: dict[str, int] = field(default_factory=lambda: {"train": 0, "valid": 0, "train_diagnostic": 0})
    skipped: dict[str, int] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)
    skipped_keys: list[tuple[str, str]] = field(default_factory=list)  # (utterance, reason): report's skipped.tsv

    def skip(self, reason: str, utt: str, detail: str = "") -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.skipped_keys.append((utt, f"{reason} ({detail})" if detail else reason))


def egs_job(src: TaskSource, archive: int, out_dir: str | os.PathLike, opts: EgsOptions,
            progress: bool = True) -> dict:
    """Write archive ``archive`` (train, valid and train-diagnostic parts) of a task."""
    out_dir = Path(out_dir)
    feats_dirs = [FeatsDir(f) for _, _, f in src.sets]
    utts = task_utterances(src, feats_dirs)
    valid, subset = held_out_lists(utts, opts, src.task, task_utt2spk(src) if opts.valid_by == "speaker" else None,
                                   src.seed_name)
    mine = {u for u, a in archive_of_utterances(utts, src.nj, opts, src.seed_name).items() if a == archive}
    frame = src.kind == "frame"
    feat_dim = feats_dirs[0].feat_dim
    store = _store(src, feat_dim, opts.dtype, _cmvn_opts(feats_dirs[0]))
    arks = KaldiArks()  # features and alignments read in place, by scp offset
    if frame:
        pdfs = _scp(out_dir / "ali_pdf.scp")
        num_pdfs = int(read_scalar(out_dir / "num_pdfs"))
    else:
        classes = {c: i for i, c in enumerate(class_map(src))}
    rng = np.random.default_rng([opts.seed, zlib.crc32(src.seed_name.encode()), archive])
    ivec_dim = IvectorSource.open(next(iter(src.ivectors.values()))).dim if src.ivectors else 0
    counts = _Counts()
    writers = {part: ArchiveWriter(out_dir / f"{prefix}.{archive}", feat_dim, opts.dtype, frame, ivec_dim,
                                   shuffle_seed=int(rng.integers(2**31)), features=store is None,
                                   sort_window=0 if frame else opts.sort_window)
               for part, prefix in (("train", "egs"), ("valid", "valid"), ("train_diagnostic", "train_diagnostic"))}
    pending = Pending(writers, opts.frames_per_eg if frame else 0, num_pdfs if frame else 0, arks)
    try:
        for (name, data_dir, _), fd in zip(src.sets, feats_dirs):
            means, variances = parse_cmvn_opts(_cmvn_opts(fd))
            cmvn = fd.cmvn_stats() if means and store is None else {}  # a store's features have CMVN applied
            utt2spk = read_utt2spk(data_dir / "utt2spk")
            ivec = IvectorSource.open(src.ivectors[name]) if src.ivectors else None
            if not frame:
                utt2label = {k: v[0] for _, k, v in read_table(data_dir / src.labels, 2, 2)}
            entries = [(u, rx) for u, rx in fd.feats.items() if u in mine]
            for utt, rx in tqdm(entries, desc=f"egs {src.task}.{archive} {name}", unit="utt",
                                disable=not progress, mininterval=2.0):
                first, feats = store.segment(utt) if store else (None, arks.matrix(rx))
                if frame:
                    got = _frame_examples(utt, feats, pdfs, arks, pending, opts, rng, counts)
                else:
                    got = _utterance_examples(utt, feats, utt2label, classes, opts, rng, counts, data_dir / src.labels)
                if got is None:
                    continue
                ivectors = None
                if ivec is not None:
                    draw = got[0]
                    starts = batch_starts([feats.shape[0]], [draw[0]], [draw[1]], opts.frames_per_eg) if frame \
                        else draw[0]
                    ivectors = ivec.rows_for(utt, feats.shape[0], starts, opts.left_context, rng)
                    if ivectors is None:
                        counts.skip("no_ivector" if utt not in ivec.table else "ivector_length_mismatch", utt)
                        continue
                if means and store is None:
                    feats = apply_cmvn(np.asarray(feats), cmvn[utt2spk[utt]], means, variances)
                counts.utts += 1
                counts.frames += feats.shape[0]
                parts = ("valid",) if utt in valid else ("train", "train_diagnostic") if utt in subset else ("train",)
                for part in parts:
                    counts.examples[part] += got[0][0] if frame else len(got[0][0])
                pending.add(f"{src.task}-{utt}", parts, feats, *got, ivectors, first)
        pending.flush()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    for w in writers.values():
        w.close()
    report = {"archive": archive, "data_sets": ",".join(n for n, _, _ in src.sets), "utts": counts.utts,
              "frames": counts.frames, "examples": counts.examples, "skipped": counts.skipped,
              "classes": counts.classes, "skipped_keys": counts.skipped_keys}
    write_text(out_dir / f"report.{archive}.json", json.dumps(report, indent=1) + "\n")
    return report


def _store(src: TaskSource, feat_dim: int, dtype: str, cmvn_opts: str) -> FeatureStore | None:
    """The task's feature store, checked to hold its data sets as the task would store them."""
    if src.store is None:
        return None
    if src.kind != "utterance":
        raise BabelflowError(f"task '{src.task}': a feature store is for utterance tasks (a frame task's "
                             "utterances are its own)")
    store = FeatureStore(Path(src.store))
    store.check(src.task, [n for n, _, _ in src.sets], feat_dim, dtype, cmvn_opts)
    return store


def _scp(path: Path) -> dict[str, str]:
    """A scp as {key: rxfilename}, parsed as kaldiio.load_scp parses it."""
    out = {}
    with open(path) as f:
        for line in f:
            seps = line.split(None, 1)
            if len(seps) != 2:
                raise BabelflowError(f"{path}: invalid line '{line.rstrip()}'")
            out[seps[0]] = seps[1].rstrip()
    return out


def _cmvn_opts(feats: FeatsDir) -> str:
    """The features' CMVN options; an adopted Kaldi data dir must be given a ``cmvn_opts`` file."""
    if feats.cmvn_opts is None:
        raise BabelflowError(f"{feats.path / 'cmvn_opts'}: file not found (a Kaldi data dir does not record the "
                             "CMVN to apply: write it there, e.g. --norm-means=false --norm-vars=false)")
    return feats.cmvn_opts


def _frame_examples(utt, feats, pdfs, arks, pending, opts, rng, counts):
    """((chunk count, gap order), alignment) of an utterance, or None (skipped, counted)."""
    if utt not in pdfs:
        counts.skip("no_alignment", utt)
        return None
    ali = arks.int_vector(pdfs[utt])
    num_frames = feats.shape[0]
    if abs(len(ali) - num_frames) > opts.length_tolerance:
        counts.skip("length_mismatch", utt, f"alignment {len(ali)} frames, features {num_frames}, "
                                            f"tolerance {opts.length_tolerance}")
        return None
    pending.check(utt, ali)
    draw = chunk_draw(num_frames, opts.frames_per_eg, rng)
    if draw[0] == 0:
        counts.skip("too_short", utt)
        return None
    return draw, ali


def _utterance_examples(utt, feats, utt2label, classes, opts, rng, counts, label_file):
    if utt not in utt2label:
        counts.skip("no_label", utt)
        return None
    label = utt2label[utt]
    if label not in classes:
        raise BabelflowError(f"{label_file}: utterance '{utt}': label '{label}' is not in the label map "
                             f"({', '.join(classes)})")
    starts, sizes = utterance_chunks(feats.shape[0], opts.chunking, opts.min_chunk, opts.max_chunk, rng)
    counts.classes[label] = counts.classes.get(label, 0) + len(starts)
    return (starts, sizes), np.full(len(starts), classes[label], np.int64)


def finalize_egs_dir(src: TaskSource, out_dir: str | os.PathLike, opts: EgsOptions) -> dict:
    """Merge job reports, write ``info/`` (Kaldi's names), the utterance lists and report.tsv."""
    import pandas as pd

    out_dir = Path(out_dir)
    reports = [json.loads((out_dir / f"report.{a}.json").read_text()) for a in range(1, len(src.archives()) + 1)]
    rows = []
    for r in reports:
        row = {"archive": r["archive"], "data_sets": r["data_sets"], "utts": r["utts"],
               "frames": r["frames"], **{f"egs_{k}": v for k, v in r["examples"].items()},
               **{f"skipped_{k}": v for k, v in r["skipped"].items()},
               **{f"class_{k}": v for k, v in r["classes"].items()}}
        rows.append(row)
    table = pd.DataFrame(rows).fillna(0)
    num = table.columns.difference(["data_sets"])
    table[num] = table[num].astype("int64")
    total = table.drop(columns=["archive", "data_sets"]).sum()
    if total["egs_train"] == 0:
        skipped = {k[8:]: int(v) for k, v in total.items() if k.startswith("skipped_")}
        raise BabelflowError(f"task '{src.task}': no training examples (skipped utterances: {skipped or 'none'})")
    table.to_csv(out_dir / "report.tsv.tmp", sep="\t", index=False)
    os.replace(out_dir / "report.tsv.tmp", out_dir / "report.tsv")
    write_skipped(out_dir / "skipped.tsv", [tuple(k) for r in reports for k in r.get("skipped_keys", [])])
    utts = task_utterances(src)
    utt2spk = task_utt2spk(src) if opts.valid_by == "speaker" else None
    valid, subset = held_out_lists(utts, opts, src.task, utt2spk, src.seed_name)
    write_table(out_dir / "valid_uttlist", [(u,) for u in sorted(valid)])
    write_table(out_dir / "train_subset_uttlist", [(u,) for u in sorted(subset)])
    feats, *others = [FeatsDir(f) for _, _, f in src.sets]
    cmvn_opts = _cmvn_opts(feats)
    for (name, _, _), fd in zip(src.sets[1:], others):
        if _cmvn_opts(fd) != cmvn_opts or fd.feat_dim != feats.feat_dim:
            raise BabelflowError(f"task '{src.task}': data set '{name}' has other features/CMVN than "
                                 f"'{src.sets[0][0]}'")
    write_text(out_dir / "cmvn_opts", cmvn_opts + "\n")
    ivector_dim = 0
    if src.ivectors:
        dims = {name: IvectorSource.open(d).dim for name, d in src.ivectors.items()}
        if len(set(dims.values())) > 1:
            raise BabelflowError(f"task '{src.task}': i-vector dims differ across data sets: {dims}")
        ivector_dim = next(iter(dims.values()))
    info = {
        "format_version": FORMAT_VERSION, "task": src.task, "kind": src.kind,
        "feat_dim": feats.feat_dim, "feats_dtype": opts.dtype, "feat_type": feats.feat_type,
        "left_context": opts.left_context, "right_context": opts.right_context,
        "left_context_initial": -1, "right_context_final": -1,
        "frames_per_eg": opts.frames_per_eg if src.kind == "frame" else 0,
        "num_archives": len(src.archives()), "num_frames": int(total["frames"]),
        "num_utts": int(total["utts"]), "num_egs": int(total["egs_train"]), "ivector_dim": ivector_dim,
        "key_format": "segment-frame", "cmvn_opts": cmvn_opts,
        "valid_by": opts.valid_by, "num_valid_utts": len(valid),
    }
    if src.store is not None:  # relative: the egs dirs and their store move together
        info["feats_store"] = os.path.relpath(src.store, out_dir)
    if utt2spk is not None:
        info["num_valid_speakers"] = len({utt2spk[u] for u in valid})
    if src.kind == "frame":
        info["num_pdfs"] = read_scalar(out_dir / "num_pdfs")
        info["egs_per_archive"] = int(total["egs_train"]) // len(src.archives())
    else:
        classes = class_map(src)
        info["num_classes"] = len(classes)
        write_table(out_dir / "info" / "classes.txt", [(c, i) for i, c in enumerate(classes)])
    if info["feat_type"] is None:  # an adopted Kaldi data dir that does not say (as imported Kaldi egs)
        del info["feat_type"]
    write_info(out_dir, info)
    EgsDir(out_dir).check()  # every archive opens and agrees with info/
    return info
