"""Options of the GMM alignment step (``params.yaml`` ``gmm:``), light enough for the Snakefile.

One dataclass per stage (lang, mono, tri, align); no numpy nor k2-fsa import here, so the CLI
and the workflow list them cheaply. How a stage is run (``--nj``, ``--workers``) is not an
option of the model: those are plain command-line flags (see :mod:`.train_cli`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..options import StepOptions, option

if TYPE_CHECKING:
    from ..config import Pipeline

STAGES = ("mono", "tri")
KALDI_REALIGN_ITERS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 18, 20, 23, 26, 29, 32, 35, 38]


@dataclass
class GmmOptions(StepOptions):
    """Which stage's alignments the ``ali: auto`` tasks train on."""

    SECTION = "gmm"
    use: str = option("tri", choices=STAGES, cli=False, help="mono | tri: whose alignments (align_si.sh) to use")


@dataclass
class LangOptions(StepOptions):
    """``params.yaml`` ``gmm.lang`` -> ``babelflow prepare-lang`` (Kaldi's utils/prepare_lang.sh)."""

    SECTION = "gmm"
    sil_phone: str = option("sil", param="gmm.lang.sil_phone", help="the silence (and optional silence) phone")
    oov_word: str = option("<unk>", param="gmm.lang.oov_word", help="the word unknown words map to")
    position_dependent_phones: bool = option(False, param="gmm.lang.position_dependent_phones")
    num_sil_states: int = option(3, param="gmm.lang.num_sil_states", help="3, or 5 for Kaldi's silence topology")
    sil_prob: float = option(0.5, param="gmm.lang.sil_prob", help="optional silence between words")


@dataclass
class MonoOptions(StepOptions):
    """``params.yaml`` ``gmm.mono:`` -> ``babelflow train-gmm mono`` (Kaldi's train_mono.sh defaults)."""

    SECTION = "gmm"
    num_iters: int = option(40, param="gmm.mono.num_iters")
    max_iter_inc: int = option(30, param="gmm.mono.max_iter_inc", help="last pass that adds Gaussians")
    totgauss: int = option(1000, param="gmm.mono.totgauss", help="target number of Gaussians")
    realign_iters: list[int] = option(default_factory=lambda: list(KALDI_REALIGN_ITERS),
                                      param="gmm.mono.realign_iters")
    boost_silence: float = option(1.0, param="gmm.mono.boost_silence",
                                  help="factor on the optional-silence GMMs' weights when aligning")
    beam: float = option(6.0, param="gmm.mono.beam", help="first realignment (pass 1)")
    retry_beam: float = option(24.0, param="gmm.mono.retry_beam", help="first realignment (pass 1)")
    later_beam: float = option(10.0, param="gmm.mono.later_beam", help="realignments after pass 1")
    later_retry_beam: float = option(40.0, param="gmm.mono.later_retry_beam", help="realignments after pass 1")
    careful: bool = option(False, param="gmm.mono.careful")
    acoustic_scale: float = option(0.1, param="gmm.mono.acoustic_scale")
    transition_scale: float = option(1.0, param="gmm.mono.transition_scale")
    self_loop_scale: float = option(0.1, param="gmm.mono.self_loop_scale")
    power: float = option(0.25, param="gmm.mono.power", help="#Gauss per pdf grows as occupancy^power")
    perturb: float = option(0.01, param="gmm.mono.perturb", help="mix-up mean perturbation, in standard deviations")
    mixup_min_count: float = option(20.0, param="gmm.mono.mixup_min_count", help="frames per Gaussian at least")
    seed: int = option(0, param="gmm.mono.seed", help="mix-up perturbations")
    mfcc_config: str | None = option(None, param="gmm.mono.mfcc_config",
                                     help="Kaldi mfcc.conf (default: Kaldi's MFCC defaults); dither is always 0")
    cmvn_opts: str = option("", param="gmm.mono.cmvn_opts", help="apply-cmvn options (default: means only)")
    delta_order: int = option(2, param="gmm.mono.delta_order")
    delta_window: int = option(2, param="gmm.mono.delta_window")

    def __post_init__(self) -> None:
        if self.num_iters < 1 or self.totgauss < 1:
            raise ValueError("num_iters and totgauss must be positive")
        if self.beam <= 0 or self.later_beam <= 0:
            raise ValueError("beams must be positive")


@dataclass
class TriOptions(StepOptions):
    """``params.yaml`` ``gmm.tri:`` -> ``babelflow train-gmm tri`` (Kaldi's train_deltas.sh).

    ``num_leaves``/``totgauss`` are train_deltas.sh's two positional arguments; the defaults
    (2000/10000) are what Kaldi's smallest recipe (mini_librispeech, 5 h) passes. On less data
    the split threshold ``thresh`` stops the tree early and the mix-up stops at
    ``mixup_min_count`` frames per Gaussian (the demo's 6.5 min: 168 leaves, 1900 Gaussians,
    no better than mono); minutes of audio align better with a tree smaller than the monophone
    one and few Gaussians, realigned often (demo: 50/200, realignment every pass).
    """

    SECTION = "gmm"
    num_leaves: int = option(2000, param="gmm.tri.num_leaves", help="most leaves of the tree (build-tree --max-leaves)")
    totgauss: int = option(10000, param="gmm.tri.totgauss", help="target number of Gaussians")
    num_iters: int = option(35, param="gmm.tri.num_iters")
    max_iter_inc: int = option(25, param="gmm.tri.max_iter_inc", help="last pass that adds Gaussians")
    realign_iters: list[int] = option(default_factory=lambda: [10, 20, 30], param="gmm.tri.realign_iters")
    boost_silence: float = option(1.0, param="gmm.tri.boost_silence",
                                  help="factor on the optional-silence GMMs' weights when aligning")
    beam: float = option(10.0, param="gmm.tri.beam")
    retry_beam: float = option(40.0, param="gmm.tri.retry_beam")
    careful: bool = option(False, param="gmm.tri.careful")
    acoustic_scale: float = option(0.1, param="gmm.tri.acoustic_scale")
    transition_scale: float = option(1.0, param="gmm.tri.transition_scale")
    self_loop_scale: float = option(0.1, param="gmm.tri.self_loop_scale")
    thresh: float = option(300.0, param="gmm.tri.thresh",
                           help="build-tree: smallest log-likelihood gain of a split")
    cluster_thresh: float = option(-1.0, param="gmm.tri.cluster_thresh",
                                   help="build-tree post-clustering (-1: the smallest split gain; 0: none)")
    power: float = option(0.25, param="gmm.tri.power", help="#Gauss per pdf grows as occupancy^power")
    perturb: float = option(0.01, param="gmm.tri.perturb", help="mix-up mean perturbation, in standard deviations")
    mixup_min_count: float = option(20.0, param="gmm.tri.mixup_min_count", help="frames per Gaussian at least")
    seed: int = option(0, param="gmm.tri.seed", help="mix-up perturbations")

    def __post_init__(self) -> None:
        if self.num_iters < 1 or self.num_leaves < 1 or self.totgauss < 1:
            raise ValueError("num_iters, num_leaves and totgauss must be positive")
        if self.beam <= 0 or self.retry_beam <= 0:
            raise ValueError("beams must be positive")


@dataclass
class AlignOptions(StepOptions):
    """``params.yaml`` ``gmm.align:`` -> ``babelflow align-gmm`` (Kaldi's align_si.sh defaults)."""

    SECTION = "gmm"
    beam: float = option(10.0, param="gmm.align.beam")
    retry_beam: float = option(40.0, param="gmm.align.retry_beam")
    careful: bool = option(False, param="gmm.align.careful")
    boost_silence: float = option(1.0, param="gmm.align.boost_silence")
    acoustic_scale: float = option(0.1, param="gmm.align.acoustic_scale")
    transition_scale: float = option(1.0, param="gmm.align.transition_scale")
    self_loop_scale: float = option(0.1, param="gmm.align.self_loop_scale")


def gmm_tasks(p: Pipeline) -> list[str]:
    """Tasks the gmm step trains GMMs for: ``ali: auto`` ones (their alignments) and, with ``decode.gmm``,
    every decoded task (the GMM baseline's WER; with alignments at hand, only the baseline)."""
    from ..decode.options import DecodeOptions

    d = p.options(DecodeOptions)
    return [name for name, t in p.tasks.items() if t.auto_ali or (d.gmm and name in d.tasks)]


def resolve(p: Pipeline, check_paths: bool) -> None:
    """``ali: auto`` tasks get the alignment dir of the chosen stage."""
    use = p.options(GmmOptions).use
    if gmm_tasks(p):
        for cls in (LangOptions, MonoOptions, TriOptions, AlignOptions):  # their own checks, now, not in a job
            p.options(cls)
        lang = p.options(LangOptions)
        if not 0.0 <= lang.sil_prob < 1.0:
            raise p.error("gmm.lang.sil_prob", f"must be in [0, 1), got {lang.sil_prob}")
        if lang.num_sil_states < 1 or lang.num_sil_states == 2:
            raise p.error("gmm.lang.num_sil_states", f"1, 3 or more (prepare_lang.sh), got {lang.num_sil_states}")
        conf = p.options(MonoOptions).mfcc_config
        if check_paths and conf and not Path(conf).is_file():
            raise p.error("gmm.mono.mfcc_config", f"file '{conf}' not found")
    for t in p.tasks.values():
        if t.auto_ali:
            t.ali = p.layout.gmm(t.name, f"{use}_ali")
