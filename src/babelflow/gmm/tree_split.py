"""The greedy split search of Kaldi's ``build-tree`` (``tree/build-tree-utils.cc``: ``DecisionTreeSplitter``,
``FindBestSplitForKey``), vectorised over questions: for each leaf, the question whose yes/no split of the
leaf's events gains the most log-likelihood under one Gaussian per side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..kaldi.tree import ConstantEventMap, EventMap, SplitEventMap
from .clustering import GaussStats, refine_clusters
from .questions import Questions

if TYPE_CHECKING:
    from .tree_stats import TreeStats

__all__ = ["TreeSplitter", "SplitFinder"]


class TreeSplitter:
    """Kaldi ``DecisionTreeSplitter``: one leaf (or split node) of the tree grown from one stub leaf."""

    def __init__(self, leaf: int, idx: np.ndarray, ctx: SplitFinder):
        self.leaf, self.idx, self.yes, self.no = leaf, idx, None, None
        self.best, self.key, self.yes_set = ctx.best_split(idx)

    def do_split(self, ctx: SplitFinder, next_leaf: list[int]) -> None:
        if self.yes is None:  # a leaf: split it, the "no" side gets a new leaf id
            yes = np.isin(ctx.stats.events[self.idx, ctx.stats.column(self.key)], self.yes_set)
            self.yes = TreeSplitter(self.leaf, self.idx[yes], ctx)
            self.no = TreeSplitter(next_leaf[0], self.idx[~yes], ctx)
            next_leaf[0] += 1
            self.leaf, self.idx = -1, None
        else:
            (self.yes if self.yes.best >= self.no.best else self.no).do_split(ctx, next_leaf)
        self.best = max(self.yes.best, self.no.best)

    def to_map(self) -> EventMap:
        if self.yes is None:
            return ConstantEventMap(self.leaf)
        return SplitEventMap(self.key, tuple(self.yes_set), self.yes.to_map(), self.no.to_map())


class SplitFinder:
    """The question tables and stats shared by all splitters (``FindBestSplitForKey`` vectorised over questions)."""

    def __init__(self, stats: TreeStats, questions: Questions, min_count: float):
        self.stats, self.questions, self.min_count = stats, questions, min_count
        self.keys = sorted(k for k in questions.by_key)  # Kaldi asks the keys in sorted order: pdf-class first
        width = 1 + max([int(stats.events.max(initial=0))] + [max(q, default=0) for qs in questions.by_key.values()
                                                                  for q in qs])
        self.tables = {}
        for key, qs in questions.by_key.items():
            a = np.zeros((len(qs), width))
            for i, q in enumerate(qs):
                a[i, list(q)] = 1.0
            self.tables[key] = a

    def best_split(self, idx: np.ndarray) -> tuple[float, int, tuple[int, ...]]:
        """Kaldi ``FindBestSplit``: the best question over all keys (the first key wins ties)."""
        best: tuple[float, int, tuple[int, ...]] = (0.0, 0, ())
        if len(idx) <= 1:
            return best
        events, stats = self.stats.events[idx], self.stats.stats.take(idx)
        for key in self.keys:
            impr, yes_set = self._best_for_key(events[:, self.stats.column(key)].astype(np.int64), stats, key)
            if impr > best[0]:
                best = (impr, key, yes_set)
        return best

    def _best_for_key(self, vals: np.ndarray, stats: GaussStats, key: int) -> tuple[float, tuple[int, ...]]:
        """Kaldi ``FindBestSplitForKey``: every question's gain at once; the first best wins. ``min_count`` applies
        to the questions, not to Kaldi's optional refinement of the best one."""
        qs, table = self.questions.by_key[key], self.tables[key]
        if vals.min() < 0:  # the key is absent from some events (context-independent phone): not askable
            return 0.0, ()
        summed = stats.group_sum(vals, vals.max() + 1)
        impr, yes_set = 0.0, ()
        if qs:
            a = table[:, : len(summed)]
            yes = GaussStats(a @ summed.count, a @ summed.x, a @ summed.x2, summed.var_floor)
            tot = summed.total()
            no = GaussStats(tot.count - yes.count, tot.x - yes.x, tot.x2 - yes.x2, summed.var_floor)
            gain = yes.objf() + no.objf() - tot.objf()
            valid = (yes.count > 0) & (no.count > 0) & (yes.count >= self.min_count) & (no.count >= self.min_count)
            gain = np.where(valid, gain, 0.0)
            b = int(np.argmax(gain))
            if gain[b] > 0:
                impr, yes_set = float(gain[b]), qs[b]
        if self.questions.refine_iters > 0:  # Kaldi refines the best question like 2-means over the values
            assign = np.zeros(len(summed), dtype=np.int64)
            assign[[v for v in yes_set if v < len(summed)]] = 1
            impr += refine_clusters(summed, summed.group_sum(assign, 2), assign, self.questions.refine_iters)
            yes_set = tuple(int(v) for v in np.flatnonzero(assign == 1))
        return impr, tuple(yes_set)
