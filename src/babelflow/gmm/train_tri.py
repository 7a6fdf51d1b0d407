"""Triphone GMM training on delta features (Kaldi's ``steps/train_deltas.sh``) from an alignment dir.

A monophone model cannot tell a phone's contexts apart; train_deltas.sh clusters the
phones-in-context that the (monophone) alignments show into a decision tree and trains one
GMM per leaf. The sequence is Kaldi's: acc-tree-stats per job + sum-tree-stats,
cluster-phones + the lang's extra questions, build-tree (at most ``num_leaves`` leaves),
gmm-init-model + gmm-mixup, convert-ali, compile-train-graphs, then the EM loop of
:func:`.train.train_gmm` (35 passes, realignment at 10, 20, 30, Gaussians mixed up towards
``totgauss`` until pass 25). The features are the alignment dir's (its ``conf/mfcc.conf``,
``cmvn_opts``, ``delta_opts``), as train_deltas.sh reads them from there. Every random
choice is seeded, so the same inputs and options give byte-identical outputs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ..errors import BabelflowError
from ..io import atomic_dir, write_text
from ..kaldi.alignments import AlignmentDir
from ..kaldi.transition_model import TransitionModel
from ..kaldi.tree import ContextDependency
from .align import AlignParams, GmmJobs, JobState, compile_graphs, get_alignments, set_alignments, silence_pdfs
from .features import GmmFeatureSpec, LangInfo, read_lang
from .model import GmmModel
from .options import TriOptions
from .questions import cluster_phones
from .train import (
    EmSettings,
    em_passes,
    last_failed,
    split_by_count,
    train_gmm,
    write_info,
    write_model_files,
    write_train_log,
)
from .tree_build import TreeBuildReport, build_tree_report
from .tree_model import convert_alignments, init_model_from_tree
from .tree_stats import TreeStats, accumulate_tree_stats

__all__ = ["train_tri", "TriOptions"]

GMM_MIXUP_POWER = 0.2  # gmm-mixup's default --power (gmm-est's is 0.25)


# ----------------------------------------------------------------------------- per job (in the workers)
def job_keys(st: JobState) -> list[str]:
    return list(st.keys)


def job_tree_stats(st: JobState, tm: TransitionModel, ci_phones: tuple[int, ...]) -> TreeStats | None:
    """acc-tree-stats over the job's current alignments (None: the job has none)."""
    alis = get_alignments(st)
    if not alis:
        return None
    feats = {k: st.utt_feats(i) for i, k in enumerate(st.keys)}
    return accumulate_tree_stats(feats, alis, tm, ci_phones=ci_phones)


def job_convert(st: JobState, old_tm: TransitionModel, new_tm: TransitionModel, tree: ContextDependency) -> list[str]:
    """convert-ali of the job's alignments to the new model; returns the utterances that could not be converted."""
    alis = get_alignments(st)
    new = convert_alignments(old_tm, new_tm, tree, alis)
    set_alignments(st, new)
    return sorted(set(alis) - set(new))


# ----------------------------------------------------------------------------- main side
def load_alignments(jobs: GmmJobs, ali_dir: AlignmentDir) -> list[str]:
    """Give each job the alignments of its utterances from ``ali_dir`` (any number of jobs there); returns
    the utterances that have none."""
    alis = dict(ali_dir.transition_alignments())
    keys = jobs.map(job_keys)
    jobs.map(set_alignments, per_job=[({k: alis[k] for k in ks if k in alis},) for ks in keys])
    return [k for ks in keys for k in ks if k not in alis]


def check_ali_dir(ali_dir: AlignmentDir, lang: LangInfo) -> None:
    """The alignments must be of this lang's phones and topology (convert-ali keeps the HMM states)."""
    tm = ali_dir.transition_model
    if tm.topology != lang.topology:
        raise BabelflowError(f"{ali_dir.path / 'final.mdl'}: its HMM topology is not {lang.path / 'topo'}'s "
                             "(aligned with another lang dir?)")
    names = {i: s for s, i in lang.phones.items()}
    wrong = [p for p in tm.topology.phones if ali_dir.phones is not None and ali_dir.phones.get(p) != names.get(p)]
    if wrong:
        raise BabelflowError(f"{ali_dir.path / 'phones.txt'}: phone ids {wrong[:5]} name other phones than in "
                             f"{lang.path / 'phones.txt'}")


def build_tri_tree(jobs: GmmJobs, lang: LangInfo, old_tm: TransitionModel, opts: TriOptions
                   ) -> tuple[ContextDependency, TreeBuildReport, TreeStats, list[list[int]]]:
    """acc-tree-stats + sum-tree-stats, cluster-phones (+ extra questions) and build-tree, as train_deltas.sh."""
    from .lang import LangDir

    ld = LangDir(lang.path)
    parts = [p for p in jobs.map(job_tree_stats, old_tm, tuple(ld.context_indep_phones)) if p is not None]
    stats = TreeStats.sum(parts)  # job order: the same floats whatever the workers
    questions = cluster_phones(stats, ld.sets, (1,), ld.extra_questions)
    tree, report = build_tree_report(stats, questions, ld.roots, lang.topology, max_leaves=opts.num_leaves,
                                     thresh=opts.thresh, cluster_thresh=opts.cluster_thresh)
    return tree, report, stats, questions


def write_tree_log(out: Path, report: TreeBuildReport, stats: TreeStats, num_questions: int) -> None:
    """``log/tree.tsv``: what build-tree logs (leaves after each stage, likelihood gains)."""
    rows = [("events", len(stats)), ("frames", stats.num_frames), ("questions", num_questions),
            ("stub_leaves", report.stub_leaves), ("split_leaves", report.split_leaves),
            ("removed_by_clustering", report.removed_by_clustering),
            ("removed_by_rounding", report.removed_by_rounding), ("num_leaves", report.num_leaves),
            ("like_impr", report.like_impr), ("like_impr_per_frame", report.like_impr_per_frame),
            ("frames_split", report.frames_split), ("objf_change_clustering", report.objf_change_clustering),
            ("cluster_thresh", report.cluster_thresh)]
    write_text(out / "log" / "tree.tsv", "name\tvalue\n" + "".join(
        f"{k}\t{v:.6g}\n" if isinstance(v, float) else f"{k}\t{v}\n" for k, v in rows))


def train_tri(data_dir: str | os.PathLike, lang_dir: str | os.PathLike, ali_dir: str | os.PathLike,
              out_dir: str | os.PathLike, opts: TriOptions = TriOptions(), nj: int = 4, workers: int = 0,
              progress: bool = True) -> dict:
    """Kaldi ``steps/train_deltas.sh``: a data dir, a lang dir and an alignment dir of it (mono_ali) -> a
    triphone model and alignment dir (final.mdl, tree, ali.N.gz, ..., log/tree.tsv), the same layout as
    :func:`.train.train_mono`'s. Returns the figures written to ``info/``."""
    start = time.time()
    lang = read_lang(lang_dir)
    ali = AlignmentDir(ali_dir)
    check_ali_dir(ali, lang)
    old_tm = ali.transition_model
    spec = GmmFeatureSpec.read(ali.path)
    with GmmJobs(data_dir, spec, lang, nj, workers) as jobs, atomic_dir(out_dir) as tmp:
        no_ali = load_alignments(jobs, ali)
        num_utts = sum(s["utts"] for s in jobs.summaries)
        if len(no_ali) == num_utts:
            raise BabelflowError(f"{ali.path}: no alignment for any utterance of {data_dir}")
        tree, report, stats, questions = build_tri_tree(jobs, lang, old_tm, opts)
        write_tree_log(tmp, report, stats, len(questions))
        model, occs = init_model_from_tree(tree, stats, lang.topology)
        del stats
        am = split_by_count(model.am, occs, opts.num_leaves, np.random.default_rng([opts.seed, 0]), opts.perturb,
                            GMM_MIXUP_POWER, opts.mixup_min_count)  # gmm-mixup --mix-up=$numleaves
        model = GmmModel(model.transition_model, am)
        no_graph = sum(jobs.map(compile_graphs, tree, model.transition_model, lang), [])
        no_convert = sum(jobs.map(job_convert, old_tm, model.transition_model, tree), [])
        boost = silence_pdfs(model.transition_model, lang.optional_silence)

        def align_params(_: int) -> AlignParams:
            return AlignParams(opts.beam, opts.retry_beam, opts.careful, opts.acoustic_scale, opts.transition_scale,
                               opts.self_loop_scale, opts.boost_silence, boost)

        passes = em_passes(opts.num_iters, set(opts.realign_iters), opts.num_leaves, opts.totgauss,
                           opts.max_iter_inc, align_params, first_iter=1)
        settings = EmSettings(opts.power, opts.perturb, opts.mixup_min_count, opts.seed)
        model, last_occs, rows = train_gmm(jobs, model, passes, settings, progress, desc="tri")
        num_aligned = sum(write_model_files(tmp, model, tree, lang, spec, jobs, last_occs if rows else occs))
        write_text(tmp / "questions.int", "".join(" ".join(map(str, q)) + "\n" for q in questions))
        write_train_log(tmp, rows)
        notes = ([f"no alignment in {ali.path}: {k}" for k in no_ali]
                 + [f"convert-ali failed: {k}" for k in no_convert]
                 + [f"no transcript or no training graph: {k}" for k in no_graph] + last_failed(rows))
        write_text(tmp / "log" / "train.log", "".join(n + "\n" for n in notes))
        info = {"num_pdfs": model.am.num_pdfs, "num_leaves": report.num_leaves, "num_gauss": model.am.num_gauss,
                "feat_dim": spec.dim, "num_utts": num_utts, "num_aligned": num_aligned, "frames": jobs.frames,
                "hours": jobs.frames * spec.frame_shift / 3600, "num_iters": opts.num_iters,
                "tree_like_impr_per_frame": report.like_impr_per_frame,
                "avg_loglike": rows[-1]["avg_loglike"] if rows else None, "seconds": time.time() - start}
        write_info(tmp, {k: v for k, v in info.items() if v is not None})
    return info
