"""Kaldi's ``cluster-phones`` (``AutomaticallyObtainQuestions``) and ``compile-questions``: the phone-set
questions a triphone tree may ask, found by clustering the phones' pooled statistics top-down.

``train_deltas.sh`` builds ``questions.int`` this way, then appends the lang's extra questions;
the result decides which contexts :func:`.tree_build.build_tree` can tell apart.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BabelflowError
from ..kaldi.tree import PDF_CLASS_KEY
from .clustering import GlibcRand, tree_cluster

if TYPE_CHECKING:
    from ..kaldi.hmm_topology import HmmTopology
    from .tree_stats import TreeStats

__all__ = ["obtain_questions", "cluster_phones", "Questions", "compile_questions"]

log = logging.getLogger(__name__)


def obtain_questions(phone_sets: Sequence[Sequence[int]], assignments: np.ndarray,
                     parents: np.ndarray) -> list[list[int]]:
    """Kaldi ``ObtainSetsOfPhones``: each tree cluster's phones (non-leaf clusters collect their descendants';
    Kaldi does not fill the root), top-level first, then the input sets; duplicates and empty sets dropped."""
    raw: list[list[int]] = [[] for _ in parents]
    for i, clust in enumerate(assignments):
        raw[clust] += list(phone_sets[i])
    for j, parent in enumerate(parents):
        raw[j].sort()
        if parent < len(parents) - 1:
            raw[parent] += raw[j]
    out, seen = [], set()
    for s in raw[::-1] + [sorted(s) for s in phone_sets]:
        if tuple(s) not in seen:
            seen.add(tuple(s))
            if s:
                out.append(list(s))
    return out



def cluster_phones(stats: TreeStats, phone_sets: Sequence[Sequence[int]], pdf_class_list: Sequence[int] = (1,),
                   extra_questions: Sequence[Sequence[int]] = (), num_tries: int = 10) -> list[list[int]]:
    """Kaldi ``cluster-phones`` (``AutomaticallyObtainQuestions``) plus the lang's ``extra_questions``, as
    ``train_deltas.sh`` builds ``questions.int``: phone sets are clustered top-down by 2-means on their
    Gaussians pooled over ``pdf_class_list`` (default: the middle state of 3), and every cluster of the
    binary tree becomes a question. The k-means starts use Kaldi's own pseudo-random sequence."""
    sets = [sorted(int(p) for p in s) for s in phone_sets]
    flat = [p for s in sets for p in s]
    if not sets or any(not s or len(set(s)) != len(s) for s in sets) or len(set(flat)) != len(flat):
        raise BabelflowError("cluster-phones: phone sets must be non-empty, without duplicates, and disjoint")
    keep = np.isin(stats.events[:, stats.N], list(pdf_class_list))
    if keep.sum() * 10 < len(keep):
        log.warning("cluster-phones: most tree stats are not of pdf-classes %s (non-standard topology?)",
                    list(pdf_class_list))
    central = stats.events[keep, stats.P].astype(np.int64)
    set_of = np.full(max(max(flat), central.max(initial=0)) + 1, len(sets), dtype=np.int64)
    for i, s in enumerate(sets):
        set_of[s] = i
    per_set = stats.stats.take(np.flatnonzero(keep)).group_sum(set_of[central], len(sets) + 1).take(
        np.arange(len(sets)))
    for i in np.flatnonzero(per_set.count == 0):
        log.warning("cluster-phones: no stats available for phone set %s", sets[i])
    assign, parents, _ = tree_cluster(per_set, len(sets), GlibcRand(), num_tries=num_tries)
    return obtain_questions(sets, assign, parents) + [sorted(q) for q in extra_questions]


@dataclass
class Questions:
    """Kaldi's compiled questions (``compile-questions`` → ``questions.qst``): the yes-sets per event key."""

    by_key: dict[int, list[tuple[int, ...]]]
    refine_iters: int = 0  # --num-iters-refine (Kaldi default 0: questions used as given)


def compile_questions(phone_questions: Sequence[Sequence[int]], topo: HmmTopology, context_width: int = 3,
                      num_iters_refine: int = 0) -> Questions:
    """Kaldi ``compile-questions``: the phone questions (sorted, de-duplicated) for every context position,
    and the pdf-class questions ``{0}, {0,1}, ...`` up to the largest number of pdf-classes in ``topo``."""
    qs = [tuple(sorted(int(p) for p in q)) for q in phone_questions]
    if any(len(set(q)) != len(q) for q in qs):
        raise BabelflowError("compile-questions: a question contains a phone twice")
    qs = sorted(set(qs))
    max_classes = max(topo.num_pdf_classes(p) for p in topo.phones)
    by_key = {n: qs for n in range(context_width)}
    by_key[PDF_CLASS_KEY] = [tuple(range(i + 1)) for i in range(max_classes - 1)]
    return Questions(by_key, num_iters_refine)

