"""Per-job GMM work: Kaldi's compile-train-graphs, align-equal-compiled, gmm-align-compiled and
gmm-acc-stats-ali, on a data dir split into jobs that live in worker processes (:class:`GmmJobs`).

The data dir is split by speaker into ``nj`` jobs, as Kaldi's scripts split it. Each job
lives in one worker process for the whole run, holding its features, training graphs
and current alignment in memory; an EM pass sends it the model (a few hundred kB) and
gets back sufficient statistics. Results depend only on the job, never on which worker
ran it, so any number of workers gives the same bytes.

Alignment is gmm-align-compiled's code in kaldi-hmm-gmm: the training graph (compiled with
transition and self-loop scale 0, as compile-train-graphs does) gets the transition
probabilities (AddTransitionProbs), and Kaldi's FasterDecoder (``align_utterance_wrapper``)
runs on a DecodableAmDiagGmmScaled, which computes only the pdfs the beam reaches.
Statistics are accumulated in numpy: one matmul per pdf over the frames aligned to it.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from ..data.datadir import DataDir
from ..data.split import split_data
from ..errors import BabelflowError
from ..io import environment, read_table
from ..kaldi.alignments import write_int_vectors
from ..kaldi.transition_model import TransitionModel
from ..kaldi.tree import ContextDependency
from .features import GmmFeatureSpec, LangInfo, job_features
from .model import GmmModel

# ----------------------------------------------------------------------------- worker side


@dataclass
class JobState:
    """One job's data in its worker: features (one matrix; utterance ``i`` = rows ``starts[i]:starts[i+1]``),
    transcripts as word ids, training graphs (and their tree) and the current transition-id alignment."""

    job: int
    keys: list[str]
    feats: np.ndarray
    starts: np.ndarray
    words: list[list[int] | None]
    graphs: list[Any] = field(default_factory=list)
    tree: ContextDependency | None = None  # the graphs'
    ali: list[np.ndarray | None] = field(default_factory=list)

    def utt_feats(self, i: int) -> np.ndarray:
        return self.feats[self.starts[i]:self.starts[i + 1]]


@dataclass(frozen=True)
class AlignParams:
    """gmm-align-compiled's settings for one pass; ``boost_pdfs``: the optional-silence pdfs (gmm-boost-silence)."""

    beam: float = 10.0
    retry_beam: float = 40.0
    careful: bool = False
    acoustic_scale: float = 0.1
    transition_scale: float = 1.0
    self_loop_scale: float = 0.1
    boost_silence: float = 1.0
    boost_pdfs: tuple[int, ...] = ()


@dataclass
class GmmStats:
    """Sufficient statistics per Gaussian, in :meth:`AmDiagGmm.stacked` order (Kaldi AccumAmDiagGmm, "mvw")."""

    occ: np.ndarray  # (G,) float64
    mean: np.ndarray  # (G, dim): sum of posterior * x
    var: np.ndarray  # (G, dim): sum of posterior * x^2

    @classmethod
    def zeros(cls, num_gauss: int, dim: int) -> GmmStats:
        return cls(np.zeros(num_gauss), np.zeros((num_gauss, dim)), np.zeros((num_gauss, dim)))

    def __iadd__(self, other: GmmStats) -> GmmStats:
        self.occ += other.occ
        self.mean += other.mean
        self.var += other.var
        return self


@dataclass
class PassResult:
    """What one job returns from an EM pass (sums over its utterances)."""

    stats: GmmStats | None
    trans_counts: np.ndarray | None
    loglike: float = 0.0
    frames: int = 0
    ali_loglike: float = 0.0
    ali_frames: int = 0
    ali_done: int = 0
    ali_failed: list[str] = field(default_factory=list)
    ali_retried: int = 0


_STATES: dict[tuple[str, int], JobState] = {}  # (run id, job) -> state, in whichever process holds the job


def _load(run: str, job: int, split_dir: str, spec: GmmFeatureSpec, words: dict[str, int], oov: int) -> dict:
    feats = job_features(spec, split_dir)
    text = {k: v for _, k, v in read_table(Path(split_dir) / "text", 1)} if (Path(split_dir) / "text").is_file() \
        else {}
    keys = list(feats)
    ids = [[words.get(w, oov) for w in text[k]] if k in text else None for k in keys]
    starts = np.concatenate([[0], np.cumsum([feats[k].shape[0] for k in keys])]).astype(np.int64)
    mats = [feats[k] for k in keys]
    x = np.concatenate(mats) if mats else np.zeros((0, spec.dim), np.float32)
    st = JobState(job, keys, x, starts, ids)
    _STATES[(run, job)] = st
    first = x[: starts[min(10, len(keys))]].astype(np.float64)  # gmm-init-mono: subset-feats --n=10
    return {"utts": len(keys), "frames": int(starts[-1]), "oov": sum(w == oov for ws in ids if ws for w in ws),
            "init": (first.shape[0], first.sum(0), (first * first).sum(0))}


def _call(run: str, job: int, fn: Callable, args: tuple) -> Any:
    return fn(_STATES[(run, job)], *args)


def _drop(run: str, job: int) -> None:
    _STATES.pop((run, job), None)


def compile_graphs(st: JobState, tree: ContextDependency, tm: TransitionModel, lang: LangInfo) -> list[str]:
    """compile-train-graphs (scales 0/0, as Kaldi): one graph per transcribed utterance; returns failures.
    The job's alignments are kept: they may be the new tree's, from convert-ali."""
    from .k2 import kaldifst, khg
    from .model import to_khg_transition_model, to_khg_tree

    # The compiler keeps pointers to these without owning them: they must outlive it.
    lex, ktm, ktree = kaldifst.StdVectorFst.read(str(lang.lexicon_fst)), to_khg_transition_model(tm, tree), \
        to_khg_tree(tree)
    opts = khg.TrainingGraphCompilerOptions(transition_scale=0.0, self_loop_scale=0.0)
    compiler = khg.TrainingGraphCompiler(ktm, ktree, lex, list(lang.disambig), opts)
    st.graphs, st.tree, failed = [], tree, []
    for key, words in zip(st.keys, st.words):
        g = compiler.compile_graph_from_text(words) if words is not None else None
        if g is None or g.start == -1:
            failed.append(key)
            g = None
        st.graphs.append(g)
    if len(st.ali) != len(st.keys):  # kept when set already (convert-ali'd alignments for this tree)
        st.ali = [None] * len(st.keys)
    del compiler  # before lex, ktm and ktree
    return failed


def string_hash_seed(key: str) -> int:
    """Kaldi's StringHasher (x*7853 + char, 64-bit) narrowed to int32: align-equal-compiled's seed per utterance."""
    h = 0
    for b in key.encode():
        h = (h * 7853 + (b - 256 if b > 127 else b)) % 2**64
    h %= 2**32
    return h - 2**32 if h >= 2**31 else h


def equal_align(st: JobState) -> list[str]:
    """align-equal-compiled: a random path of the right length, frames shared out equally; returns failures."""
    from .k2 import kaldifst

    failed = []
    for i, (key, g) in enumerate(zip(st.keys, st.graphs)):
        st.ali[i] = None
        if g is not None:
            ok, path = kaldifst.equal_align(g, int(st.starts[i + 1] - st.starts[i]), string_hash_seed(key), 10)
            if ok:
                st.ali[i] = np.asarray(kaldifst.get_linear_symbol_sequence(path)[1], dtype=np.int32)
        if st.ali[i] is None:
            failed.append(key)
    return failed


def augment(x: np.ndarray) -> np.ndarray:
    """[x, x^2, 1] (float32): times :meth:`AmDiagGmm.stacked`'s ``w`` gives every Gaussian's log-likelihood."""
    return np.concatenate([x, x * x, np.ones((x.shape[0], 1), x.dtype)], axis=1).astype(np.float32)


def accumulate(g: dict[str, np.ndarray], x: np.ndarray, pdf: np.ndarray) -> tuple[GmmStats, float]:
    """gmm-acc-stats-ali's GMM part: posterior-weighted stats of each frame under its aligned pdf (``-1``: skip),
    one matmul per pdf over its frames; posteriors in float, sums in double, as Kaldi."""
    w, off = g["w"], g["offsets"]
    dim = x.shape[1]
    occ, mv, total = np.zeros(w.shape[0]), np.zeros((w.shape[0], 2 * dim)), 0.0
    frames = np.flatnonzero(pdf >= 0)
    order = frames[np.argsort(pdf[frames], kind="stable")]
    counts = np.bincount(pdf[frames], minlength=off.size - 1)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    for p in np.flatnonzero(counts):
        xs = x[order[bounds[p]:bounds[p + 1]]]
        xd = xs.astype(np.float64)
        xd = np.concatenate([xd, xd * xd], axis=1)
        a, b = off[p], off[p + 1]
        ll = augment(xs) @ w[a:b].T
        if b - a == 1:
            total += float(ll.sum(dtype=np.float64))
            occ[a] += xs.shape[0]
            mv[a] += xd.sum(axis=0)
            continue
        top = ll.max(axis=1, keepdims=True)
        ll = np.exp(ll - top)
        norm = ll.sum(axis=1, keepdims=True)
        total += float((np.log(norm.astype(np.float64)) + top).sum())
        post = (ll / norm).astype(np.float64)
        occ[a:b] += post.sum(axis=0)
        mv[a:b] += post.T @ xd
    return GmmStats(occ, mv[:, :dim], mv[:, dim:]), total


def _realign(st: JobState, model: GmmModel, p: AlignParams, res: PassResult) -> None:
    """gmm-boost-silence | gmm-align-compiled over the job."""
    from .k2 import kaldifst, khg
    from .model import to_khg_am, to_khg_transition_model

    kam = to_khg_am(model.am, p.boost_pdfs, p.boost_silence)  # the decodables point at these two
    ktm = to_khg_transition_model(model.transition_model, st.tree)
    config = khg.AlignConfig(beam=p.beam, retry_beam=p.retry_beam, careful=p.careful)
    for i, (key, graph) in enumerate(zip(st.keys, st.graphs)):
        st.ali[i] = None
        if graph is None:
            continue
        fst = kaldifst.StdVectorFst(graph)
        khg.add_transition_probs(ktm, [], p.transition_scale, p.self_loop_scale, fst)
        x = st.utt_feats(i)  # a view: alive while the decodable is
        decodable = khg.DecodableAmDiagGmmScaled(kam, ktm, x, p.acoustic_scale)
        done, _, retried, like, frames, ali, _ = khg.align_utterance_wrapper(
            config, key, p.acoustic_scale, fst, decodable, 0, 0, 0, 0.0, 0)
        res.ali_retried += retried
        if not done:
            res.ali_failed.append(key)
            continue
        st.ali[i] = np.asarray(ali, dtype=np.int32)
        res.ali_done += 1
        res.ali_loglike += like
        res.ali_frames += frames


def em_pass(st: JobState, model: GmmModel, align: AlignParams | None, acc: bool = True) -> PassResult:
    """One job's share of an EM pass: realign (if ``align``), then accumulate GMM and transition statistics
    (gmm-acc-stats-ali) under ``model``."""
    res = PassResult(None, None)
    if align is not None:
        _realign(st, model, align, res)
    if not acc:
        return res
    tid2pdf = model.transition_model.transition_id_to_pdf()
    tids = np.full(st.feats.shape[0], -1, dtype=np.int64)
    for i, a in enumerate(st.ali):
        if a is not None and a.size == st.starts[i + 1] - st.starts[i]:
            tids[st.starts[i]:st.starts[i + 1]] = a
    used = tids > 0
    pdf = np.where(used, tid2pdf[np.maximum(tids, 0)], -1)
    res.stats, res.loglike = accumulate(model.am.stacked(), st.feats, pdf)
    res.trans_counts = np.bincount(tids[used], minlength=tid2pdf.size).astype(np.float64)
    res.frames = int(used.sum())
    return res


def get_alignments(st: JobState) -> dict[str, np.ndarray]:
    return {k: a for k, a in zip(st.keys, st.ali) if a is not None}


def set_alignments(st: JobState, alis: dict[str, np.ndarray]) -> None:
    """Replace the job's alignments (e.g. convert-ali output for a new tree); absent keys count as failed."""
    st.ali = [alis.get(k) for k in st.keys]


def write_alignments(st: JobState, path: str) -> int:
    """``ali.<job>.gz``: gzip of a binary int32-vector archive, mtime 0 (byte-reproducible)."""
    raw = Path(path).with_suffix(".raw")
    alis = get_alignments(st)
    write_int_vectors(f"ark:{raw}", alis.items())
    with open(raw, "rb") as src, open(path, "wb") as out, \
            gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as dst:
        shutil.copyfileobj(src, dst)
    raw.unlink()
    return len(alis)


# ----------------------------------------------------------------------------- main side


_ONE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


class GmmJobs:
    """A data dir split by speaker into ``nj`` jobs, each held by one of ``workers`` processes (0: one per job,
    up to the CPUs this process may use; -1: all in this process). :meth:`map` runs ``fn(JobState, *args)``
    on every job.

    Workers run single-threaded BLAS: the matrices are small, and threaded OpenBLAS on them is
    several times slower on a busy machine.
    """

    def __init__(self, data_dir: str | os.PathLike, spec: GmmFeatureSpec, lang: LangInfo, nj: int,
                 workers: int = 0):
        if nj < 1:
            raise BabelflowError(f"GMM jobs: nj must be at least 1 (got {nj})")
        self.run, self.nj, self.spec = uuid.uuid4().hex, nj, spec
        self._tmp = Path(tempfile.mkdtemp(prefix="babelflow-gmm-"))
        self._pools: list[ProcessPoolExecutor] = []
        try:
            splits = split_data(DataDir.load(data_dir, check_audio=False), nj, self._tmp)
            n = workers if workers > 0 else min(nj, len(os.sched_getaffinity(0))) if workers == 0 else 0
            ctx = get_context("spawn")  # no fork of a process holding OpenFst/BLAS state
            with environment(_ONE_THREAD):  # read by the workers' BLAS when they start, i.e. now
                self._pools = [ProcessPoolExecutor(1, mp_context=ctx) for _ in range(n)]
                for p in self._pools:
                    p.submit(int).result()
            futures = [self._submit(j, _load, (self.run, j, str(s), spec, lang.words, lang.oov), raw=True)
                       for j, s in enumerate(splits, 1)]
            self.summaries: list[dict] = [f() for f in futures]
        except BaseException:
            self.close()
            raise

    def _submit(self, job: int, fn: Callable, args: tuple, raw: bool = False) -> Callable[[], Any]:
        call, full = (fn, args) if raw else (_call, (self.run, job, fn, args))
        if not self._pools:
            out = call(*full)
            return lambda: out
        return self._pools[(job - 1) % len(self._pools)].submit(call, *full).result

    def map(self, fn: Callable, *args: Any, per_job: list[tuple] | None = None) -> list[Any]:
        """``fn(state, *args)`` (or ``fn(state, *per_job[j-1])``) on each job, results in job order."""
        futures = [self._submit(j, fn, per_job[j - 1] if per_job else args) for j in range(1, self.nj + 1)]
        return [f() for f in futures]

    @property
    def frames(self) -> int:
        return sum(s["frames"] for s in self.summaries)

    def close(self) -> None:
        for j in range(1, self.nj + 1):
            if not self._pools:
                _drop(self.run, j)
        for p in self._pools:  # the worker processes end, and their job states with them
            p.shutdown(wait=True, cancel_futures=True)
        self._pools = []
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> GmmJobs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def silence_pdfs(tm: TransitionModel, phones: tuple[int, ...]) -> tuple[int, ...]:
    """Kaldi GetPdfsForPhones: every pdf a tuple of these phones uses (what gmm-boost-silence scales)."""
    return tuple(sorted({p for t in tm.tuples if t[0] in phones for p in (t[2], t[3])}))
