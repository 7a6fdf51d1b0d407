"""Options of the GMM alignment step (``params.yaml`` ``gmm:``), light enough for the Snakefile."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..options import StepOptions, option

if TYPE_CHECKING:
    from ..config import Pipeline

STAGES = ("mono", "tri")


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


def resolve(p: Pipeline, check_paths: bool) -> None:
    """``ali: auto`` tasks get the alignment dir of the chosen stage."""
    use = p.options(GmmOptions).use
    for t in p.tasks.values():
        if t.auto_ali:
            t.ali = p.layout.gmm(t.name, f"{use}_ali")
