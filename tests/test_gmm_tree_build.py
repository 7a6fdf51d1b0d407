"""babelflow's own triphone tree (acc-tree-stats, cluster-phones, build-tree, gmm-init-model, convert-ali)."""

from __future__ import annotations

import ctypes
import ctypes.util
import io

import numpy as np
import pytest

from babelflow.gmm.clustering import GaussStats, GlibcRand, cluster_bottom_up, gauss_objf
from babelflow.gmm.questions import cluster_phones, compile_questions
from babelflow.gmm.tree_build import build_tree, build_tree_report, default_roots, map_events
from babelflow.gmm.tree_model import convert_alignments, init_model_from_tree
from babelflow.gmm.tree_stats import TreeStats, accumulate_tree_stats, split_to_phones
from babelflow.kaldi.hmm_topology import HmmTopology
from babelflow.kaldi.transition_model import TransitionModel
from babelflow.kaldi.tree import ContextDependency, SplitEventMap, TableEventMap, read_tree, write_tree

SIL, NUM_PHONES, SHIFTED, TRIGGERS = 1, 6, 3, (2, 4)  # phone 3 sounds different after phones 2 and 4


def synthetic(num_utts: int = 150, seed: int = 0, dim: int = 2) -> tuple[TransitionModel, dict, dict]:
    """Monophone alignments (self-loops first, as align-equal writes them) and features whose mean depends
    on phone and state, and for phone 3 also on the left phone; state means are far apart."""
    rng = np.random.default_rng(seed)
    tm = TransitionModel.monophone(NUM_PHONES)
    means = 12.0 * np.arange(3 * (NUM_PHONES + 1)).reshape(NUM_PHONES + 1, 3, 1) * np.ones(dim)
    feats, alis = {}, {}
    for u in range(num_utts):
        seq = [SIL] + [int(p) for p in rng.integers(2, NUM_PHONES + 1, size=rng.integers(3, 8))] + [SIL]
        f, a = [], []
        for k, p in enumerate(seq):
            shift = 6.0 if p == SHIFTED and k and seq[k - 1] in TRIGGERS else 0.0
            for s in range(3):
                n = int(rng.integers(1, 5))
                f.append(means[p, s] + shift * np.eye(dim)[-1] + rng.normal(size=(n, dim)))
                a += [tm.transition_id(p, s, s)] * (n - 1) + [tm.transition_id(p, s, s + 1)]
        feats[f"u{u:03d}"] = np.concatenate(f).astype(np.float32)
        alis[f"u{u:03d}"] = np.array(a, dtype=np.int32)
    return tm, feats, alis


@pytest.fixture(scope="module")
def synth():
    tm, feats, alis = synthetic()
    stats = accumulate_tree_stats(feats, alis, tm, ci_phones=[SIL])
    sets, roots = default_roots(range(1, NUM_PHONES + 1), [SIL])
    return tm, feats, alis, stats, sets, roots


def test_glibc_rand_is_kaldis_rand():
    path = ctypes.util.find_library("c")
    if not path or "libc.so" not in path:
        pytest.skip("needs glibc")
    libc = ctypes.CDLL(path)
    libc.srand(1)
    r = GlibcRand()
    assert [libc.rand() for _ in range(700)] == [r() for _ in range(700)]


def test_gauss_objf_matches_kaldi_hmm_gmm():
    from babelflow.gmm.k2 import khg

    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4)) * [1.0, 0.05, 3.0, 0.01]  # two dims below the variance floor
    gc = khg.GaussClusterable(4, 0.01)
    for row in x:
        gc.add_stats(row, 1.0)
    ours = gauss_objf(np.array(50.0), x.sum(0), (x * x).sum(0), 0.01)
    assert ours == pytest.approx(gc.objf(), rel=1e-6)
    assert gauss_objf(np.array([0.0]), np.zeros((1, 4)), np.zeros((1, 4)), 0.01)[0] == 0.0


def test_split_to_phones_on_kaldi_alignments(kaldi_fixtures):
    from babelflow.gmm.tree_model import _change_reordering
    from babelflow.gmm.tree_stats import tid_table
    from babelflow.kaldi.alignments import AlignmentDir

    ali_dir = AlignmentDir(kaldi_fixtures / "lang0")
    tm = ali_dir.transition_model
    phone_seqs = {k: [int(x) for x in v] for k, *v in
                  (line.split() for line in (kaldi_fixtures / "lang0" / "phone_seq.txt").read_text().splitlines())}
    table = tid_table(tm)
    for key, ali in ali_dir.transition_alignments():
        bounds, ok = split_to_phones(tm, ali)
        assert ok and bounds[-1] == len(ali)
        assert tm.transition_id_to_phone()[ali[bounds[:-1]]].tolist() == phone_seqs[key]
        reordered = _change_reordering(table, ali)
        assert not np.array_equal(reordered, ali)
        assert np.array_equal(split_to_phones(tm, reordered)[0], bounds)  # Kaldi's default order splits the same
        assert np.array_equal(_change_reordering(table, reordered), ali)
    assert not split_to_phones(tm, ali[:-1])[1]  # cut inside the last phone: rejected, as Kaldi does


def test_real_kaldi_lang_dir_and_alignments(kaldi_fixtures, monkeypatch):
    """Kaldi's own lang dir (prepare_lang.sh: sets, roots, extra questions, CI phones) and align-equal output."""
    from babelflow.gmm.lang import LangDir
    from babelflow.kaldi.alignments import AlignmentDir
    from babelflow.tables import read_matrices

    lang = LangDir(kaldi_fixtures / "graph" / "lang")
    assert default_roots(range(1, 7), lang.silence_phones) == (
        lang.sets, [(r[0] == "shared", r[1] == "split", r[2]) for r in lang.roots])
    monkeypatch.chdir(kaldi_fixtures)
    feats = dict(read_matrices("scp:lang0/feats.scp"))
    ali_dir = AlignmentDir(kaldi_fixtures / "lang0")
    tm = ali_dir.transition_model
    stats = accumulate_tree_stats(feats, dict(ali_dir.transition_alignments()), tm,
                                  ci_phones=lang.context_indep_phones)
    questions = cluster_phones(stats, lang.sets, extra_questions=lang.extra_questions)
    tree, report = build_tree_report(stats, questions, lang.roots, tm.topology, max_leaves=30, thresh=10)
    assert (map_events(tree.to_pdf, stats.events, 3) >= 0).all() and report.num_leaves % 8 == 0
    assert len({tree.pdf([left, 1, right], c) for left in range(7) for right in range(7) for c in range(3)}) <= 3


def test_tree_stats_events(synth):
    tm, feats, alis, stats, _, _ = synth
    assert stats.num_frames == sum(len(a) for a in alis.values())
    sil = stats.events[:, 1] == SIL
    assert (stats.events[sil][:, [0, 2]] == -1).all()  # context-independent: no context keys
    assert (stats.events[~sil][:, [0, 2]] >= 0).all()
    expect: dict[tuple, list] = {}  # acc-tree-stats by hand, frame by frame
    phone_of, class_of = tm.transition_id_to_phone(), tm.transition_id_to_hmm_state()
    for key, ali in alis.items():
        bounds, ok = split_to_phones(tm, ali)
        assert ok
        phones = [0] + phone_of[ali[bounds[:-1]]].tolist() + [0]
        for k in range(len(bounds) - 1):
            left, centre, right = phones[k: k + 3]
            for t in range(bounds[k], bounds[k + 1]):
                ev = (-1, centre, -1, class_of[ali[t]]) if centre == SIL else (left, centre, right, class_of[ali[t]])
                acc = expect.setdefault(ev, [0, 0.0, 0.0])
                acc[0] += 1
                acc[1] = acc[1] + feats[key][t].astype(np.float64)
                acc[2] = acc[2] + feats[key][t].astype(np.float64) ** 2
    assert sorted(expect) == [tuple(e) for e in stats.events.tolist()]
    for row, ev in enumerate(stats.events.tolist()):
        count, x, x2 = expect[tuple(ev)]
        assert stats.stats.count[row] == count
        assert np.allclose(stats.stats.x[row], x) and np.allclose(stats.stats.x2[row], x2)
    halves = [accumulate_tree_stats({k: feats[k]}, {k: alis[k]}, tm, ci_phones=[SIL]) for k in list(alis)[:40]]
    merged = TreeStats.sum(halves)
    direct = accumulate_tree_stats({k: feats[k] for k in list(alis)[:40]}, {k: alis[k] for k in list(alis)[:40]},
                                   tm, ci_phones=[SIL])
    assert np.array_equal(merged.events, direct.events)
    assert np.allclose(merged.stats.x, direct.stats.x) and np.allclose(merged.stats.count, direct.stats.count)


def test_cluster_phones_gives_nested_questions(synth):
    _, _, _, stats, sets, _ = synth
    questions = cluster_phones(stats, sets, extra_questions=[[2, 4]])
    assert questions[-1] == [2, 4]
    body = [set(q) for q in questions[:-1]]
    assert all({p} in body for p in range(1, NUM_PHONES + 1))  # the input sets are always there
    for a in body:  # a binary clustering tree: any two clusters are disjoint or nested
        for b in body:
            assert not (a & b) or a <= b or b <= a
    assert cluster_phones(stats, sets) == questions[:-1]  # deterministic, as Kaldi's Rand() is


def test_bottom_up_merges_only_below_threshold():
    pts = GaussStats(np.full(4, 10.0), np.array([[0.0], [1.0], [100.0], [101.0]]) * 10,
                     np.array([[0.0], [10.0], [100000.0], [102010.0]]) + 10.0, 0.01)
    _, (assign,) = cluster_bottom_up([pts], thresh=50.0)
    assert assign.tolist() == [0, 0, 1, 1]
    _, (assign,) = cluster_bottom_up([pts], thresh=0.0)
    assert assign.tolist() == [0, 1, 2, 3]


def _first_split(tree: ContextDependency, phone: int) -> SplitEventMap:
    node = tree.to_pdf
    assert isinstance(node, TableEventMap) and node.key == 1
    node = node.table[phone]
    while isinstance(node, SplitEventMap) and node.key == -1:  # skip pdf-class splits
        node = node.yes if isinstance(node.yes, SplitEventMap) else node.no
    return node


def test_tree_finds_the_left_context_split(synth):
    tm, _, _, stats, sets, roots = synth
    questions = cluster_phones(stats, sets, extra_questions=[list(TRIGGERS)])
    tree = build_tree(stats, questions, roots, tm.topology, max_leaves=40, thresh=100)
    split = _first_split(tree, SHIFTED)
    assert split.key == 0 and set(split.yes_set) == set(TRIGGERS)
    # Kaldi's post-clustering and rounding may merge leaves again (phone 3 has few frames); without them:
    tree, report = build_tree_report(stats, questions, roots, tm.topology, max_leaves=40, thresh=100,
                                     cluster_thresh=0, round_num_leaves=False)
    for pdf_class in range(3):  # phone 3 after 2 or 4 gets its own pdfs, not after the others
        after = {tree.pdf([left, SHIFTED, 5], pdf_class) for left in TRIGGERS}
        other = {tree.pdf([left, SHIFTED, 5], pdf_class) for left in (0, 1, 5, 6)}
        assert len(after) == 1 and len(other) == 1 and after != other
    assert report.like_impr > 0 and report.split_leaves <= 40
    for other_phone in (2, 4, 5, 6):  # nothing else depends on context: only the 3 states are kept
        assert len({tree.pdf([left, other_phone, right], c) for left in range(7) for right in range(7)
                    for c in range(3)}) == 3


def test_num_leaves_contiguous_and_every_event_maps(synth):
    tm, _, _, stats, sets, roots = synth
    questions = cluster_phones(stats, sets)
    for max_leaves, rnd in ((20, True), (33, False), (0, True)):
        tree, report = build_tree_report(stats, questions, roots, tm.topology, max_leaves=max_leaves, thresh=10,
                                         round_num_leaves=rnd)
        leaves = map_events(tree.to_pdf, stats.events, 3)
        assert (leaves >= 0).all()
        assert sorted(set(leaves.tolist())) == list(range(tree.num_pdfs))  # 0..n-1, each with data
        assert max_leaves == 0 or report.split_leaves <= max_leaves
        assert report.num_leaves == tree.num_pdfs == report.split_leaves - report.removed_by_clustering \
            - report.removed_by_rounding
        assert not rnd or tree.num_pdfs % 8 == 0


def test_tree_written_reads_back_identically(synth, tmp_path):
    tm, _, _, stats, sets, roots = synth
    tree = build_tree(stats, cluster_phones(stats, sets), roots, tm.topology, max_leaves=30, thresh=50)
    for binary in (True, False):
        write_tree(tmp_path / "tree", tree, binary=binary)
        back = read_tree(tmp_path / "tree")
        assert back == tree
    from babelflow.gmm.model import to_khg_tree

    kaldi_tree = to_khg_tree(tree)  # Kaldi's own C++ reading our bytes
    rng = np.random.default_rng(0)
    for ctx in rng.integers(0, NUM_PHONES + 1, size=(300, 3)):
        ctx[1] = max(ctx[1], 1)
        for c in range(3):
            assert back.pdf(ctx.tolist(), c) == tree.pdf(ctx.tolist(), c)
            assert kaldi_tree.compute(ctx.tolist(), c) == (True, tree.pdf(ctx.tolist(), c))
    buf = io.BytesIO()
    tree.write(buf, binary=False)
    assert buf.getvalue().startswith(b"ContextDependency 3 1 ToPdf TE 1 7 ( NULL")


def test_unsplit_root_five_state_silence_and_min_count():
    rng = np.random.default_rng(3)
    five = [(s, s, [(s, 0.5), (s + 1, 0.5)]) for s in range(5)] + [(-1, -1, [])]
    three = [(s, s, [(s, 0.75), (s + 1, 0.25)]) for s in range(3)] + [(-1, -1, [])]
    topo = HmmTopology.from_entries([([SIL], five), (range(2, NUM_PHONES + 1), three)])
    tuples = [(p, s, 10 * p + s, 10 * p + s) for p in range(1, NUM_PHONES + 1) for s in range(5 if p == SIL else 3)]
    tm = TransitionModel.from_topology(topo, tuples)
    feats, alis = {}, {}
    for u in range(60):
        seq = [SIL] + [int(p) for p in rng.integers(2, NUM_PHONES + 1, size=5)] + [SIL]
        a = []
        for p in seq:
            for s in range(5 if p == SIL else 3):
                a += [tm.transition_id(p, s, s, pdf=10 * p + s)] * 2 + [tm.transition_id(p, s, s + 1, pdf=10 * p + s)]
        alis[str(u)] = np.array(a)
        feats[str(u)] = (tm.transition_id_to_pdf()[a][:, None] + rng.normal(size=(len(a), 2))).astype(np.float32)
    stats = accumulate_tree_stats(feats, alis, tm)  # silence context-dependent here, but its root is not split
    sets = [[p] for p in range(1, NUM_PHONES + 1)]
    roots = [(False, False, [SIL])] + [("shared", "split", s) for s in sets[1:]]
    questions = compile_questions(cluster_phones(stats, sets), topo)
    assert questions.by_key[-1] == [(0,), (0, 1), (0, 1, 2), (0, 1, 2, 3)]
    tree, report = build_tree_report(stats, questions, roots, topo, max_leaves=60, thresh=20, cluster_thresh=0,
                                     round_num_leaves=False)
    sil_pdfs = [tree.pdf([left, SIL, right], c) for c in range(5) for left in range(7) for right in range(7)]
    assert len(set(sil_pdfs)) == 5 and report.stub_leaves == 5 + NUM_PHONES - 1
    sizes = []
    for min_count in (0, 150, 250, 10_000):  # not in Kaldi: no split may leave fewer frames on a side
        capped = build_tree(stats, questions, roots, topo, max_leaves=60, thresh=20, cluster_thresh=0,
                            round_num_leaves=False, min_count=min_count)
        leaf = map_events(capped.to_pdf, stats.events, 3)
        counts = np.bincount(leaf, weights=stats.stats.count)
        for phone in range(2, NUM_PHONES + 1):
            mine = np.unique(leaf[stats.events[:, 1] == phone])
            assert len(mine) == 1 or counts[mine].min() >= min_count
        sizes.append(capped.num_pdfs)
    assert sizes[0] == report.num_leaves and sizes == sorted(sizes, reverse=True) and sizes[-1] == report.stub_leaves


def test_init_model_and_transition_model(synth):
    from babelflow.gmm.model import transition_model_for_tree

    tm, _, _, stats, sets, roots = synth
    tree = build_tree(stats, cluster_phones(stats, sets), roots, tm.topology, max_leaves=24, thresh=50)
    model, occs = init_model_from_tree(tree, stats, tm.topology, var_floor=0.5)
    leaves = map_events(tree.to_pdf, stats.events, 3)
    pooled = stats.stats.group_sum(leaves, tree.num_pdfs)
    assert np.allclose(occs, pooled.count)
    assert model.am.num_pdfs == tree.num_pdfs == model.transition_model.num_pdfs
    means = np.stack([g.means[0] for g in model.am.pdfs])
    variances = np.stack([g.variances[0] for g in model.am.pdfs])
    assert np.allclose(means, pooled.x / pooled.count[:, None], atol=1e-4)
    expect = np.maximum(pooled.x2 / pooled.count[:, None] - (pooled.x / pooled.count[:, None]) ** 2, 0.5)
    # Kaldi computes E[x^2] - E[x]^2 in float32: with means ~60 that costs ~1e-2 absolute
    assert np.allclose(variances, expect, rtol=1e-3, atol=2e-2) and variances.min() >= 0.5 - 1e-6
    assert model.transition_model == transition_model_for_tree(tree, tm.topology)
    for phone, state, pdf, _ in model.transition_model.tuples:  # every tuple's pdf is one the tree gives
        assert pdf in {tree.compute([l, phone, r], state) for l in range(7) for r in range(7)}


def test_convert_alignments_are_valid_for_the_new_model(synth):
    tm, _, alis, stats, sets, roots = synth
    tree = build_tree(stats, cluster_phones(stats, sets), roots, tm.topology, max_leaves=24, thresh=50)
    model, _ = init_model_from_tree(tree, stats, tm.topology)
    new_tm = model.transition_model
    for reorder in (True, False):
        new = convert_alignments(tm, new_tm, tree, alis, reorder=reorder)
        assert new.keys() == alis.keys()
        for key, old in alis.items():
            ali = new[key]
            assert len(ali) == len(old) and ali.min() >= 1 and ali.max() <= new_tm.num_transition_ids
            bounds, ok = split_to_phones(new_tm, ali)
            assert ok and np.array_equal(bounds, split_to_phones(tm, old)[0])
            assert np.array_equal(new_tm.transition_id_to_phone()[ali], tm.transition_id_to_phone()[old])
            assert np.array_equal(np.sort(new_tm.transition_id_to_hmm_state()[ali]),
                                  np.sort(tm.transition_id_to_hmm_state()[old]))
            phones = tm.transition_id_to_phone()[old[bounds[:-1]]]
            window = np.r_[0, phones, 0]
            states, pdfs = new_tm.transition_id_to_hmm_state()[ali], new_tm.transition_id_to_pdf()[ali]
            for k in range(len(phones)):
                seg = slice(bounds[k], bounds[k + 1])
                assert np.all(np.diff(states[seg]) >= 0)  # each phone's states in order
                want = [tree.pdf(window[k: k + 3].tolist(), s) for s in states[seg]]
                assert pdfs[seg].tolist() == want
            visit = np.r_[True, np.diff(states) != 0]  # first frame of each state visit
            visit[bounds[:-1]] = True
            loops = new_tm.transition_id_is_self_loop()[ali]
            if reorder:  # Kaldi's default order: the forward transition on the first frame of a state
                assert not loops[visit].any()
            else:
                assert not loops[np.r_[visit[1:], True]].any()


def test_demo_alignments_triphone_tree(tiny_corpus):
    from babelflow.gmm.features import GmmFeatureSpec, job_features
    from babelflow.kaldi.alignments import AlignmentDir

    lang = tiny_corpus / "en"
    ali_dir = AlignmentDir(lang / "ali")
    tm = ali_dir.transition_model
    alis = dict(ali_dir.transition_alignments())
    feats = job_features(GmmFeatureSpec.build(), lang / "data")
    assert feats[next(iter(alis))].shape[1] == 39
    sil = [k for k, v in ali_dir.phones.items() if v == "sil"]
    stats = accumulate_tree_stats(feats, alis, tm, ci_phones=sil)
    sets, roots = default_roots(tm.topology.phones, sil)
    questions = cluster_phones(stats, sets)
    tree, report = build_tree_report(stats, questions, roots, tm.topology, max_leaves=60)
    print(f"\ndemo en: {len(alis)} utts, {stats.num_frames:.0f} frames, {len(stats)} events, {len(questions)} "
          f"questions; leaves {report.stub_leaves} stub -> {report.split_leaves} split -> {report.num_leaves} final "
          f"(-{report.removed_by_clustering} clustering, -{report.removed_by_rounding} rounding); like-impr "
          f"{report.like_impr:.1f} = {report.like_impr_per_frame:.3f}/frame; clustering "
          f"{report.objf_change_clustering:.1f}")
    assert report.split_leaves <= 60 and report.num_leaves % 8 == 0 and report.num_leaves > report.stub_leaves
    model, occs = init_model_from_tree(tree, stats, tm.topology)
    new = convert_alignments(tm, model.transition_model, tree, alis)
    assert new.keys() == alis.keys() and occs.sum() == stats.num_frames
    pdf = model.transition_model.transition_id_to_pdf()
    used = np.unique(np.concatenate([pdf[a] for a in new.values()]))
    assert used.tolist() == list(range(tree.num_pdfs))  # every leaf is seen in the converted alignments
