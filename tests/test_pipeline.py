"""Real Snakemake runs of the chain so far (demo corpus -> data -> features) on a tiny corpus."""

from __future__ import annotations

import kaldiio
import pytest

from babelflow.kaldi.alignments import AlignmentDir

from .conftest import REPO, planned_jobs, project_copy, run

pytestmark = pytest.mark.slow

# GMMs (the baseline decode.gmm trains for every decoded language) small enough for 16 utterances
GMM = {"mono": {"num_iters": 10, "totgauss": 200, "boost_silence": 1.0, "seed": 0},
       "tri": {"num_leaves": 40, "totgauss": 120, "num_iters": 10, "realign_iters": [2, 4, 6, 8],
               "boost_silence": 1.0, "seed": 0}}
# de is the low-resource target (lowres: mono, multi_base, multi_frozen beside the main run)
TINY = dict(demo__utts_per_lang=16, demo__langs={"en": "en-us", "de": "de"}, demo__utterance_tasks=["lang", "gender"],
            model__layers=[{"dim": 32, "splice": [-2, 0, 2]}, {"dim": 32, "splice": [-3, 3]}],
            model__bottleneck={"dim": 16}, model__frame_head={"hidden": [32]}, model__utterance_head={"hidden": [32]},
            train__num_epochs=2, merge__block_size=16, demo__test_utts_per_lang=8, demo__low_resource={"de": 12},
            merge__weights={"en": 1.0, "de": 1.0, "lang": 1.0, "gender": 1.0}, gmm__mono=GMM["mono"],
            gmm__tri=GMM["tri"])
UTTS = {"en": 16, "de": 12}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    proj = project_copy(tmp_path_factory.mktemp("proj"), **TINY)
    proc = run(["snakemake", "--cores", "2"], proj)
    return proj, proc


def test_chain_outputs(built, monkeypatch):
    proj, _ = built
    monkeypatch.chdir(proj)  # scp files hold paths relative to the project, as Kaldi's do
    for lang in ("en", "de"):
        feats = proj / "exp" / "feats" / lang
        assert (feats / "info" / "feat_dim").read_text().strip() == "40"
        mats = dict(kaldiio.load_scp(str(feats / "feats.scp")))
        assert len(mats) == UTTS[lang] and all(m.shape[1] == 40 for m in mats.values())
        # features cover exactly the alignment frames of every utterance
        ali = dict(AlignmentDir(proj / "corpus" / lang / "ali").pdf_alignments())
        assert {k: len(v) for k, v in ali.items()} == {k: m.shape[0] for k, m in mats.items()}
        stats = dict(kaldiio.load_scp(str(feats / "cmvn.scp")))
        assert sorted(stats) == ["f1", "f2", "f3", "f4", "m1", "m2", "m3", "m5"]
        assert sum(s[0, -1] for s in stats.values()) == sum(m.shape[0] for m in mats.values())
        assert (feats / "cmvn_opts").read_text().strip() == "--norm-means=false --norm-vars=false"
        assert (proj / "exp" / "data" / lang / "split2" / "2" / "wav.scp").is_file()
        assert not list(proj.rglob(".*.tmp")), "temporary files left behind"


def test_outputs_are_readable_as_the_umask_allows(built):
    """Colleagues on a shared file system can read what the workflow wrote (not tempfile's 0600/0700)."""
    import stat

    from babelflow.io import umask

    proj, _ = built
    readable = 0o444 & ~umask()
    wrong = [str(p) for root in ("exp", "corpus") for p in (proj / root).rglob("*")
             if stat.S_IMODE(p.stat().st_mode) & 0o444 != readable]
    assert not wrong, wrong[:10]


def test_training_ran_on_all_tasks(built):
    import json

    proj, _ = built
    metrics = json.loads((proj / "exp" / "train" / "metrics.json").read_text())
    assert list(metrics) == ["en", "de", "lang", "gender"]
    assert (proj / "exp" / "merged" / "allocation.tsv").is_file()
    assert (proj / "exp" / "egs" / "en" / "info" / "left_context").read_text().strip() == "5"  # the model's


def test_chain_ends_with_one_usable_model_per_task(built):
    import json

    from babelflow.kaldi.nnet3 import read_am_nnet

    proj, _ = built
    metrics = json.loads((proj / "exp" / "models" / "metrics.json").read_text())
    assert list(metrics) == ["en", "de", "lang", "gender"]
    for task in ("en", "de"):
        am = read_am_nnet(proj / "exp" / "kaldi" / task / "final.mdl")
        assert am.priors.size == am.transition_model.num_pdfs and am.left_context == 5
        assert (proj / "exp" / "models" / task / "eval" / "per_pdf.tsv").is_file()
    assert (proj / "exp" / "models" / "lang" / "eval" / "confusion.png").is_file()


def test_every_language_is_decoded(built):
    import json

    proj, _ = built
    wer = json.loads((proj / "exp" / "decode" / "metrics.json").read_text())
    assert set(wer) == {"en", "de"} and all(0.0 <= w["wer"] <= 100.0 for w in wer.values())
    for lang in ("en", "de"):
        d = proj / "exp" / "decode" / lang / "decode_test"
        assert (d / "scoring_kaldi" / "best_wer").read_text().startswith("%WER ")
        hyps = (d / "scoring_kaldi" / "penalty_0.0" / "7.txt").read_text().splitlines()
        assert len(hyps) == 8  # every test utterance decoded
        graph = proj / "exp" / "decode" / lang / "graph"
        assert (graph / "HCLG.fst").is_file() and (graph / "words.txt").is_file()


def test_every_decoded_language_has_a_gmm_baseline(built):
    import json

    proj, _ = built
    wer = json.loads((proj / "exp" / "decode" / "metrics.json").read_text())
    assert all(0.0 <= w["gmm_wer"] <= 100.0 for w in wer.values()), wer
    rows = (proj / "exp" / "decode" / "metrics.tsv").read_text().splitlines()
    assert rows[0] == "system\ttask\twer" and len(rows) == 1 + 2 * 2


def test_low_resource_target_is_compared_across_systems(built):
    import json

    import torch

    proj, _ = built
    rows = [r.split("\t") for r in (proj / "exp" / "decode" / "lowres.tsv").read_text().splitlines()]
    assert rows[0] == ["system", "task", "wer"]
    assert [(s, t) for s, t, _ in rows[1:]] == [("gmm", "de"), ("mono", "de"), ("multi", "de"), ("multi_frozen", "de")]
    assert all(0.0 <= float(w) <= 100.0 for _, _, w in rows[1:])
    assert (proj / "exp" / "decode" / "lowres.png").stat().st_size > 1000
    # multi is the main run's decode; the others decode the same test set on the same graph
    main = json.loads((proj / "exp" / "decode" / "de" / "decode_test" / "metrics.json").read_text())
    assert float(rows[3][2]) == main["wer"]
    lowres = proj / "exp" / "lowres"
    # mono and multi_frozen saw only the target; multi_base the other language(s)
    for system, seen in (("mono", {"de"}), ("multi_frozen", {"de"}), ("multi_base", {"en"})):
        log = (lowres / system / "train" / "train_log.tsv").read_text().splitlines()
        assert {line.split("\t")[2] for line in log[1:]} == seen, system
    # heads only: multi_frozen's trunk is multi_base's, bit for bit; its de head moved
    base = torch.load(lowres / "multi_base" / "train" / "final.pt", weights_only=True)["state_dict"]
    frozen = torch.load(lowres / "multi_frozen" / "train" / "final.pt", weights_only=True)["state_dict"]
    trunk = [k for k in base if k.startswith("trunk.")]
    assert trunk and all(torch.equal(base[k], frozen[k]) for k in trunk)
    heads = [k for k in base if not k.startswith("trunk.") and k in frozen]
    assert any(not torch.equal(base[k], frozen[k]) for k in heads)


def test_rerun_is_a_noop(built):
    proj, _ = built
    assert planned_jobs(proj) == {}


def test_feature_option_change_reruns_features_only(built):
    proj, _ = built
    edited = (proj / "params.yaml").read_text().replace("num_mel_bins: 40", "num_mel_bins: 30")
    assert edited != (proj / "params.yaml").read_text()
    (proj / "params.yaml").write_text(edited)
    try:
        jobs = planned_jobs(proj)
    finally:
        (proj / "params.yaml").write_text(edited.replace("num_mel_bins: 30", "num_mel_bins: 40"))
    # 2 languages x 2 jobs of features, then the utterance tasks' feature store, every egs archive (2 per
    # task: one per features job) and finalize; not the corpus, the data step or the alignments
    # and the low-resource systems (not the GMMs: they read their own MFCCs)
    assert jobs == {"features_job": 4, "features": 2, "egs_store": 1, "egs_job": 8, "egs": 4, "merge": 1, "train": 1,
                    "split": 4, "eval": 4, "export_kaldi": 2, "metrics": 1, "decode_lang": 2, "decode_graph": 2,
                    "decode_nnet": 2, "decode_metrics": 1, "lowres_train": 3, "lowres_split": 2,
                    "lowres_decode": 2, "lowres_metrics": 1, "all": 1}


def test_bad_params_fail_before_any_job(tmp_path):
    proj = project_copy(tmp_path, **{**TINY, "merge__weights": {"en": 1.0, "klingon": 0.5}})
    proc = run(["snakemake", "--cores", "1"], proj, check=False)
    assert proc.returncode != 0
    assert "merge.weights.klingon: no such task" in proc.stdout + proc.stderr
    assert not (proj / "corpus").exists()


def test_lint_clean():
    proc = run(["snakemake", "--lint"], REPO)
    assert "Congratulations" in proc.stdout + proc.stderr
