"""Options of the decoding step (``params.yaml`` ``decode:``), light enough for the Snakefile."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..options import StepOptions, option

if TYPE_CHECKING:
    from ..config import Pipeline


@dataclass
class DecodeOptions(StepOptions):
    """``params.yaml`` ``decode:`` -> ``babelflow decode`` (nnet3/decode.sh + local/score.sh defaults)."""

    SECTION = "decode"
    tasks: list[str] = option(default_factory=list, cli=False,
                              help="frame tasks to decode (Kaldi's decode_lang_list); demo: every language")
    lm_order: int = option(2, cli=False, help="n-gram order of each task's LM (its training text)")
    gmm: bool = option(True, cli=False, help="also decode with a GMM of each decoded task (its ali: auto one, else one "
                                            "trained for the baseline): gmm_wer")
    acoustic_scale: float = 0.1
    beam: float = 15.0
    lattice_beam: float = 8.0
    max_active: int = 7000
    min_active: int = 200
    min_lmwt: int = option(7, help="score.sh's LM-weight sweep")
    max_lmwt: int = 17
    word_ins_penalty: list[float] = option(default_factory=lambda: [0.0, 0.5, 1.0],
                                           help="score.sh's word-insertion penalties")


def resolve(p: Pipeline, check_paths: bool) -> None:
    """Decoded tasks are frame tasks with a test set and a lexicon (the graph's words)."""
    o = p.options(DecodeOptions)
    if o.min_lmwt < 1 or o.max_lmwt < o.min_lmwt:
        raise p.error("decode.min_lmwt", f"the LM-weight range {o.min_lmwt}..{o.max_lmwt} is empty")
    if o.lm_order < 2:
        raise p.error("decode.lm_order", f"at least 2 (a bigram), got {o.lm_order}")
    if o.beam <= 0 or o.lattice_beam <= 0 or o.acoustic_scale <= 0 or o.min_active > o.max_active:
        raise p.error("decode", "beam, lattice_beam and acoustic_scale must be > 0, min_active <= max_active")
    if len(set(o.tasks)) != len(o.tasks):
        raise p.error("decode.tasks", f"a task listed twice: {o.tasks}")
    for name in o.tasks:
        t = p.tasks.get(name)
        if t is None:
            raise p.error("decode.tasks", f"no task '{name}' (tasks: {', '.join(p.tasks)})")
        if t.kind != "frame":
            raise p.error("decode.tasks", f"'{name}' is an utterance task: only frame tasks are decoded")
        if not t.test:
            if p.demo:
                raise p.error("demo.test_utts_per_lang", f"0: the demo has no test set to decode '{name}' with")
            raise p.error(f"tasks.{name}.test", "required to decode the task (a data set of data.dirs)")
        if not (t.ali_dir or t.auto_ali):
            raise p.error(f"tasks.{name}.ali", "decoding needs an alignment dir (its final.mdl, tree and phones.txt "
                          "make the graph), not a pdf-id table")
        if not t.lexicon:
            raise p.error(f"tasks.{name}.lexicon", "required to decode the task (the graph's words)")


def decoded_tasks(p: Pipeline) -> list[str]:
    return list(p.options(DecodeOptions).tasks)
