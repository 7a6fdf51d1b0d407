"""Utterance tasks that read the very same examples train on one trunk pass (``train.shared_forward``).

Utterance tasks over the same data sets draw the same utterances, chunks and order (the egs step
seeds them with the data sets' names); over one feature store their egs then differ in the labels
alone, and Kaldi's allocation gives the k-th block of each of them the same examples (the same
pieces). Such twin blocks form one minibatch with an output per task, as one Kaldi eg may carry
several outputs (chain egs: ``output`` and ``output-xent``): the trunk runs once, each head on its
output, and the objectives are summed. The demo's four utterance tasks spend 0.65x the time of
four minibatches this way (``bench/heads.py`` section 5); each head still sees each of its
examples as often as before, and the diagnostics (:mod:`.diagnostics`) run the trunk once for
twins too, with the same numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from .data import Block, MergedSchedule

PARTS = ("train", "valid", "train_diagnostic")


def twin_groups(schedule: MergedSchedule) -> list[tuple[int, ...]]:
    """Groups (two tasks or more) of utterance tasks whose archives index the same rows of the same
    feature store, example for example, in every part."""
    by_key: dict[tuple[str, str], list[int]] = {}
    for t, egs in enumerate(schedule.egs):
        store = egs.feats_store
        if egs.kind != "utterance" or store is None:
            continue
        h = hashlib.sha1()
        for part in PARTS:
            for arch in egs.archives(part):
                h.update(f"{part}\0{arch.prefix.name}\0".encode())
                idx = arch.index  # the labels apart (a multi-field view would carry them as padding)
                for a in (arch.seg_start, arch.seg_len, idx["seg"], idx["t0"], idx["n"], arch.ivector):
                    if a is not None:
                        h.update(a.tobytes())
        by_key.setdefault((str(store.resolve()), h.hexdigest()), []).append(t)
    return [tuple(ts) for ts in by_key.values() if len(ts) > 1]


def minibatches(plan: Sequence[Block], groups: Sequence[tuple[int, ...]]) -> list[list[Block]]:
    """The blocks of ``plan`` as minibatches, in plan order: a block of a twin task takes along, to its
    own place, its twins' blocks of the same pieces, wherever the plan has them; every block once."""
    group_of = {t: g for g, ts in enumerate(groups) for t in ts}
    twins: dict[tuple, list[Block]] = {}
    key: dict[int, tuple] = {}
    seen: dict[tuple, int] = {}
    for b in plan:  # the n-th block of a task with these pieces pairs with its twins' n-th (resampling repeats)
        if b.task in group_of:
            n = seen[b.task, b.pieces] = seen.get((b.task, b.pieces), -1) + 1
            key[id(b)] = (group_of[b.task], b.pieces, n)
            twins.setdefault(key[id(b)], []).append(b)
    out, taken = [], set()
    for b in plan:
        if id(b) not in taken:
            mb = twins[key[id(b)]] if id(b) in key else [b]
            taken.update(id(x) for x in mb)
            out.append(mb)
    return out
