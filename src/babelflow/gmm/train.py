"""Flat-start monophone GMM training (Kaldi's ``steps/train_mono.sh``) and the EM loop any GMM stage uses.

``train_mono`` = gmm-init-mono (global mean/variance of job 1's first 10 utterances) +
compile-train-graphs + align-equal-compiled + :func:`train_gmm` over Kaldi's schedule
(:func:`mono_passes`: 40 passes, realignment at 1-10, 12, ..., 20, 23, ..., 38, Gaussians
mixed up towards ``totgauss`` until pass ``max_iter_inc``). :func:`train_gmm` itself knows
nothing of monophones: give it a tree's model, jobs whose graphs were compiled for that
tree and that hold initial alignments, and a list of passes (:mod:`.train_tri`, Kaldi's
``train_deltas.sh``, is the same loop on a triphone tree with convert-ali'd alignments).

Every random choice is seeded (mix-up perturbations from ``seed`` and the pass number,
equal alignment from the utterance id as Kaldi), so the same inputs and options give
byte-identical outputs, whatever the number of worker processes.
"""

from __future__ import annotations

import heapq
import os
import shutil
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import BabelflowError
from ..io import atomic_dir, write_table, write_text
from ..kaldi.transition_model import TransitionModel
from ..kaldi.tree import ContextDependency, read_tree, tree_from_topology, write_tree
from .align import AlignParams, GmmJobs, GmmStats, compile_graphs, em_pass, equal_align, silence_pdfs, write_alignments
from .features import GmmFeatureSpec, LangInfo, read_lang
from .model import (
    AmDiagGmm,
    DiagGmm,
    GmmModel,
    read_gmm_model,
    transition_model_for_tree,
    transition_state_ranges,
    write_gmm_model,
)
from .options import AlignOptions, MonoOptions

__all__ = ["EmPass", "EmSettings", "em_passes", "mono_passes", "train_gmm", "train_mono", "align", "write_model_files",
           "write_info", "write_train_log", "last_failed", "mle_update", "split_by_count", "split_targets",
           "update_transitions"]

_F32 = np.float32

LOG_COLUMNS = ("iter", "avg_loglike", "num_gauss", "realigned", "frames", "ali_avg_loglike", "ali_failed",
               "ali_retried")


# ----------------------------------------------------------------------------- gmm-est
def mle_update(am: AmDiagGmm, stats: GmmStats, min_gaussian_occupancy: float = 10.0,
               min_gaussian_weight: float = 1e-5, min_variance: float = 0.001) -> tuple[AmDiagGmm, np.ndarray]:
    """Kaldi MleAmDiagGmmUpdate (flags mvw, remove-low-count-gaussians), vectorised over all Gaussians:
    the new model and the per-pdf occupancies (gmm-est's pdf_occs / final.occs).

    A component with too little data keeps its mean and variance and is removed (the pdf's
    weights renormalised), except that a pdf's last component is never removed.
    """
    sizes = np.array([g.num_gauss for g in am.pdfs])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    pdf_of = np.repeat(np.arange(am.num_pdfs), sizes)
    old_w, old_mi, old_iv = (np.concatenate([getattr(g, a) for g in am.pdfs]).astype(np.float64)
                             for a in ("weights", "means_invvars", "inv_vars"))
    occ = stats.occ
    pdf_occs = np.add.reduceat(occ, starts)
    total = pdf_occs[pdf_of]
    prob = np.where(total > 0, occ / np.where(total > 0, total, 1.0), 1.0 / sizes[pdf_of])
    ok = (occ > min_gaussian_occupancy) & (prob > min_gaussian_weight)
    safe = np.where(ok, occ, 1.0)[:, None]
    mean = np.where(ok[:, None], stats.mean / safe, old_mi / old_iv)
    var = np.where(ok[:, None], np.maximum(stats.var / safe - mean * mean, min_variance), 1.0 / old_iv)
    bad = ~ok
    cum = np.cumsum(bad)
    rank = cum - (cum - bad)[starts][pdf_of]  # 1-based rank of a low-count component within its pdf
    keep = ~(bad & (rank <= sizes[pdf_of] - 1))
    weights = np.where(ok, prob, np.maximum(prob, min_gaussian_weight))
    new = DiagGmm.from_moments(weights, mean, var)
    w, mi, iv = new.weights, new.means_invvars, new.inv_vars
    pdfs = []
    for a, n in zip(starts, sizes):
        k = keep[a:a + n]
        if k.all():
            pdfs.append(DiagGmm(w[a:a + n], mi[a:a + n], iv[a:a + n]))
        else:  # Kaldi RemoveComponents(renormalize=true)
            pdfs.append(DiagGmm((w[a:a + n][k] / w[a:a + n][k].sum()).astype(_F32), mi[a:a + n][k], iv[a:a + n][k]))
    return AmDiagGmm(pdfs), pdf_occs


def split_targets(occs: np.ndarray, target: int, power: float, min_count: float) -> list[int]:
    """Kaldi GetSplitTargets: Gaussians per pdf, handed out one at a time to the largest occ^power / n.

    Ties go to the lower pdf-id (Kaldi's std::priority_queue leaves them unspecified).
    """
    occs = np.asarray(occs, dtype=_F32)

    def key(p: int, n: int) -> float:
        return -float(_F32(occs[p]) ** _F32(power)) / (n + 1e-10)

    heap = [(key(p, 1), p, 1) for p in range(len(occs))]
    heapq.heapify(heap)
    counts = [1] * len(occs)
    total = len(occs)
    while total < target and heap and heap[0][0] != 0.0:
        _, p, n = heapq.heappop(heap)
        if (n + 1) * min_count >= occs[p]:
            heapq.heappush(heap, (0.0, p, n))  # min-count reached: never split again
            continue
        counts[p] = n + 1
        total += 1
        heapq.heappush(heap, (key(p, n + 1), p, n + 1))
    return counts


def split_by_count(am: AmDiagGmm, occs: np.ndarray, target: int, rng: np.random.Generator,
                   perturb_factor: float = 0.01, power: float = 0.2, min_count: float = 20.0) -> AmDiagGmm:
    """Kaldi AmDiagGmm::SplitByCount / DiagGmm::Split (gmm-est --mix-up), with a seeded generator.

    Each split halves the heaviest component and moves the two copies' means apart by
    ±perturb_factor·N(0,1)·stddev per dimension.
    """
    pdfs = []
    for gmm, want in zip(am.pdfs, split_targets(occs, target, power, min_count)):
        if want <= gmm.num_gauss:
            pdfs.append(gmm)
            continue
        grow = want - gmm.num_gauss
        w, mi, iv = (np.concatenate([a, np.zeros((grow,) + a.shape[1:], _F32)])
                     for a in (gmm.weights, gmm.means_invvars, gmm.inv_vars))
        for n in range(gmm.num_gauss, want):
            k = int(np.argmax(w[:n]))
            w[k] /= 2
            w[n] = w[k]
            noise = rng.standard_normal(gmm.dim) * np.sqrt(iv[k].astype(np.float64))
            delta = _F32(perturb_factor) * noise.astype(_F32)
            iv[n], mi[n] = iv[k], mi[k] + delta
            mi[k] = mi[k] - delta
        pdfs.append(DiagGmm(w, mi, iv))
    return AmDiagGmm(pdfs)


def update_transitions(tm: TransitionModel, counts: np.ndarray, floor: float = 0.01,
                       mincount: float = 5.0) -> TransitionModel:
    """Kaldi TransitionModel::MleUpdate (default MleTransitionUpdateConfig); ``counts`` is indexed by transition-id."""
    first, _ = transition_state_ranges(tm)
    log_probs = tm.log_probs.copy()
    for s in range(len(tm.tuples)):
        c = np.asarray(counts[first[s]:first[s + 1]], dtype=np.float64)
        if c.size < 2 or c.sum() < mincount:
            continue
        p = (c / c.sum()).astype(_F32)
        for _ in range(3):  # floor and renormalise, three times (as Kaldi)
            p = np.maximum((p / p.sum()).astype(_F32), _F32(floor))
        log_probs[first[s]:first[s + 1]] = np.log(p)
    return TransitionModel(tm.topology, tm.tuples, log_probs)


def global_moments(count: float, total: np.ndarray, total_sq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance from (count, sum, sum of squares), as gmm-init-mono computes them."""
    if count <= 0:
        raise BabelflowError("gmm-init-mono: no features were seen")
    mean = total / count
    return mean, total_sq / count - mean * mean


# ----------------------------------------------------------------------------- the EM loop
@dataclass(frozen=True)
class EmPass:
    """One pass ``x`` (x.mdl -> x+1.mdl): optionally realign, accumulate, gmm-est, then mix up to ``num_gauss``."""

    iter: int
    align: AlignParams | None
    num_gauss: int  # gmm-est --mix-up (0: no mixing up)
    min_gaussian_occupancy: float = 10.0


@dataclass(frozen=True)
class EmSettings:
    """gmm-est settings that do not change between passes."""

    power: float = 0.25
    perturb_factor: float = 0.01
    min_count: float = 20.0  # mix-up: no more than occupancy / min_count Gaussians per pdf
    seed: int = 0


def em_passes(num_iters: int, realign_iters: Collection[int], num_gauss: int, totgauss: int, max_iter_inc: int,
              align: Callable[[int], AlignParams], first_iter: int = 1) -> list[EmPass]:
    """Passes ``first_iter..num_iters-1`` as train_mono.sh / train_deltas.sh schedule them: realign (with
    ``align(x)``) at ``realign_iters``; mix up to ``num_gauss``, which grows by (totgauss - num_gauss) /
    max_iter_inc (integer) after every pass up to ``max_iter_inc``."""
    inc = int((totgauss - num_gauss) / max_iter_inc) if max_iter_inc > 0 else 0
    passes = []
    for x in range(first_iter, num_iters):
        passes.append(EmPass(x, align(x) if x in realign_iters else None, num_gauss))
        if x <= max_iter_inc:
            num_gauss += inc
    return passes


def mono_passes(opts: MonoOptions, num_pdfs: int, boost_pdfs: tuple[int, ...] = ()) -> list[EmPass]:
    """train_mono.sh's schedule: pass 0 on the equal alignment (min occupancy 3, no mixing up beyond the
    one Gaussian per pdf of 0.mdl), then :func:`em_passes`; beam ``beam`` on pass 1, ``later_beam`` after."""
    def align(x: int) -> AlignParams:
        beam, retry = (opts.beam, opts.retry_beam) if x == 1 else (opts.later_beam, opts.later_retry_beam)
        return AlignParams(beam, retry, opts.careful, opts.acoustic_scale, opts.transition_scale,
                           opts.self_loop_scale, opts.boost_silence, boost_pdfs)

    return [EmPass(0, None, num_pdfs, 3.0)] + em_passes(opts.num_iters, opts.realign_iters, num_pdfs,
                                                        opts.totgauss, opts.max_iter_inc, align)


def train_gmm(jobs: GmmJobs, model: GmmModel, passes: list[EmPass], settings: EmSettings = EmSettings(),
              progress: bool = True, desc: str = "gmm") -> tuple[GmmModel, np.ndarray, list[dict]]:
    """Kaldi's GMM EM loop (gmm-align-compiled, gmm-acc-stats-ali, gmm-est --mix-up) for any tree.

    ``jobs`` must hold training graphs for ``model``'s tree (:func:`~.align.compile_graphs`) and
    alignments (equal, or converted from another model). Returns the last model, the pdf
    occupancies of the last update (``final.occs``) and one log row per pass.
    """
    rows: list[dict] = []
    occs = np.zeros(model.am.num_pdfs)
    bar = tqdm(passes, desc=desc, unit="pass", disable=not progress)
    for p in bar:
        results = jobs.map(em_pass, model, p.align)
        stats = GmmStats.zeros(model.am.num_gauss, model.am.dim)
        counts = np.zeros_like(results[0].trans_counts)
        for r in results:  # summed in job order: the same floats whatever ran where
            stats += r.stats
            counts += r.trans_counts
        frames = sum(r.frames for r in results)
        if frames == 0:
            raise BabelflowError(f"EM pass {p.iter}: no aligned frames in any job")
        ali_frames = sum(r.ali_frames for r in results)
        row = {"iter": p.iter, "avg_loglike": sum(r.loglike for r in results) / max(frames, 1),
               "num_gauss": model.am.num_gauss, "realigned": p.align is not None, "frames": frames,
               "ali_avg_loglike": sum(r.ali_loglike for r in results) / ali_frames if ali_frames else None,
               "ali_failed": sum(len(r.ali_failed) for r in results),
               "ali_retried": sum(r.ali_retried for r in results),
               "ali_failed_keys": [k for r in results for k in r.ali_failed]}
        rows.append(row)
        tm = update_transitions(model.transition_model, counts)
        am, occs = mle_update(model.am, stats, p.min_gaussian_occupancy)
        if p.num_gauss:
            rng = np.random.default_rng([settings.seed, p.iter])
            am = split_by_count(am, occs, p.num_gauss, rng, settings.perturb_factor, settings.power,
                                settings.min_count)
        model = GmmModel(tm, am)
        bar.set_postfix(loglike=f"{row['avg_loglike']:.3f}", gauss=am.num_gauss)
    return model, occs, rows


def write_train_log(out: Path, rows: list[dict]) -> None:
    """``log/train.tsv``: one row per pass (average log-likelihood per frame under the pass's model)."""
    def fmt(v: object) -> str:
        if v is None:
            return ""
        if isinstance(v, bool):
            return "yes" if v else "no"
        return f"{v:.6f}" if isinstance(v, float) else str(v)

    lines = [LOG_COLUMNS] + [tuple(fmt(r[c]) for c in LOG_COLUMNS) for r in rows]
    write_text(out / "log" / "train.tsv", "".join("\t".join(line) + "\n" for line in lines))


def train_mono(data_dir: str | os.PathLike, lang_dir: str | os.PathLike, out_dir: str | os.PathLike,
               opts: MonoOptions = MonoOptions(), nj: int = 4, workers: int = 0, progress: bool = True) -> dict:
    """Kaldi ``steps/train_mono.sh``: a data dir with transcripts + a lang dir -> a monophone model and
    alignment dir (final.mdl, tree, ali.N.gz, ...) from ``nj`` jobs in ``workers`` processes (see
    :class:`~.align.GmmJobs`). Returns the figures written to ``info/``."""
    start = time.time()
    lang = read_lang(lang_dir)
    spec = GmmFeatureSpec.build(opts.mfcc_config, opts.cmvn_opts, opts.delta_order, opts.delta_window)
    tree = tree_from_topology(lang.topology)  # gmm-init-mono's monophone tree
    tm = transition_model_for_tree(tree, lang.topology)
    with GmmJobs(data_dir, spec, lang, nj, workers) as jobs, atomic_dir(out_dir) as tmp:
        count, total, total_sq = jobs.summaries[0]["init"]
        mean, var = global_moments(count, total, total_sq)
        model = GmmModel(tm, AmDiagGmm.init_mono(tm.num_pdfs, mean, var))
        no_graph = sum(jobs.map(compile_graphs, tree, tm, lang), [])
        no_equal = sorted(set(sum(jobs.map(equal_align), [])) - set(no_graph))
        num_utts = sum(s["utts"] for s in jobs.summaries)
        if len(no_graph) + len(no_equal) == num_utts:
            raise BabelflowError(f"{data_dir}: no utterance could be aligned (transcripts in 'text'? "
                                 f"{len(no_graph)} without a training graph, {len(no_equal)} too short)")
        passes = mono_passes(opts, tm.num_pdfs, silence_pdfs(tm, lang.optional_silence))
        settings = EmSettings(opts.power, opts.perturb, opts.mixup_min_count, opts.seed)
        model, occs, rows = train_gmm(jobs, model, passes, settings, progress, desc="mono")
        num_aligned = sum(write_model_files(tmp, model, tree, lang, spec, jobs, occs))
        write_train_log(tmp, rows)
        notes = ([f"no transcript or no training graph: {k}" for k in no_graph]
                 + [f"equal alignment failed: {k}" for k in no_equal] + last_failed(rows))
        write_text(tmp / "log" / "train.log", "".join(n + "\n" for n in notes))
        info = {"num_pdfs": tm.num_pdfs, "num_gauss": model.am.num_gauss, "feat_dim": spec.dim,
                "num_utts": num_utts, "num_aligned": num_aligned, "frames": jobs.frames,
                "hours": jobs.frames * spec.frame_shift / 3600, "num_iters": opts.num_iters,
                "avg_loglike": rows[-1]["avg_loglike"], "seconds": time.time() - start}
        write_info(tmp, info)
    return info


def last_failed(rows: list[dict]) -> list[str]:
    """train.log lines for the utterances the last realignment (or the first pass) could not align."""
    last = [r for r in rows if r["realigned"]][-1:] or rows[:1]
    return [f"not aligned in the last realignment: {k}" for r in last for k in r["ali_failed_keys"]]


def write_info(out: Path, info: dict) -> None:
    """``info/<name>``, one figure per file; ``seconds``, the only figure that is not reproducible, is left out."""
    for k, v in info.items():
        if k != "seconds":
            write_text(out / "info" / k, f"{v:.6g}\n" if isinstance(v, float) else f"{v}\n")


def write_model_files(out: Path, model: GmmModel, tree: ContextDependency, lang: LangInfo, spec: GmmFeatureSpec,
                      jobs: GmmJobs, occs: np.ndarray | None) -> list[int]:
    """What every GMM dir has: final.mdl, tree, final.occs, num_jobs, phones.txt, feature settings, ali.N.gz."""
    from ..kaldi import basic_io as bio

    write_gmm_model(out / "final.mdl", model)
    write_tree(out / "tree", tree)
    if occs is not None:
        with open(out / "final.occs", "wb") as f:
            bio.write_binary_header(f)
            bio.write_float_vector(f, True, occs.astype(np.float32))
    write_text(out / "num_jobs", f"{jobs.nj}\n")
    write_table(out / "phones.txt", sorted(((s, i) for s, i in lang.phones.items()), key=lambda r: r[1]))
    spec.write(out)
    return jobs.map(write_alignments, per_job=[(str(out / f"ali.{j}.gz"),) for j in range(1, jobs.nj + 1)])


def align(data_dir: str | os.PathLike, lang_dir: str | os.PathLike, model_dir: str | os.PathLike,
          out_dir: str | os.PathLike, opts: AlignOptions = AlignOptions(), nj: int = 4, workers: int = 0) -> dict:
    """Kaldi ``steps/align_si.sh``: align ``data_dir`` with ``model_dir``'s final.mdl and tree (and the features
    it was trained on) into a new alignment dir. Returns the figures written to ``info/``."""
    model_dir = Path(model_dir)
    lang = read_lang(lang_dir)
    model, tree = read_gmm_model(model_dir / "final.mdl"), read_tree(model_dir / "tree")
    spec = GmmFeatureSpec.read(model_dir)
    missing = sorted(set(model.transition_model.topology.phones) - set(lang.phones.values()))
    if missing:
        raise BabelflowError(f"{lang.path}: phone ids {missing} of {model_dir / 'final.mdl'} are not in phones.txt")
    params = AlignParams(opts.beam, opts.retry_beam, opts.careful, opts.acoustic_scale, opts.transition_scale,
                         opts.self_loop_scale, opts.boost_silence,
                         silence_pdfs(model.transition_model, lang.optional_silence))
    with GmmJobs(data_dir, spec, lang, nj, workers) as jobs, atomic_dir(out_dir) as tmp:
        failed = sum(jobs.map(compile_graphs, tree, model.transition_model, lang), [])
        results = jobs.map(em_pass, model, params, False)
        counts = write_model_files(tmp, model, tree, lang, spec, jobs, None)
        for name in ("final.mdl", "tree", "final.occs"):  # align_si.sh copies them
            if (model_dir / name).is_file():
                shutil.copy(model_dir / name, tmp / name)
        frames = sum(r.ali_frames for r in results)
        info = {"num_utts": sum(s["utts"] for s in jobs.summaries), "num_aligned": sum(counts),
                "num_failed": len(failed) + sum(len(r.ali_failed) for r in results),
                "num_retried": sum(r.ali_retried for r in results), "frames": frames,
                "avg_loglike": sum(r.ali_loglike for r in results) / max(frames, 1)}
        write_info(tmp, info)
        notes = failed + [k for r in results for k in r.ali_failed]
        write_text(tmp / "log" / "align.log", "".join(f"not aligned: {k}\n" for k in notes))
    return info
