"""Real Snakemake runs of the chain so far (demo corpus -> data -> features) on a tiny corpus."""

from __future__ import annotations

import kaldiio
import pytest

from babelflow.kaldi.alignments import AlignmentDir

from .conftest import REPO, planned_jobs, project_copy, run

pytestmark = pytest.mark.slow

TINY = dict(demo__utts_per_lang=16, demo__langs={"en": "en-us", "de": "de"}, demo__utterance_tasks=["lang", "gender"],
            model__layers=[{"dim": 32, "splice": [-2, 0, 2]}, {"dim": 32, "splice": [-3, 3]}],
            model__bottleneck={"dim": 16}, model__frame_head={"hidden": [32]}, model__utterance_head={"hidden": [32]},
            train__num_epochs=2, merge__block_size=16, demo__test_utts_per_lang=8,
            merge__weights={"en": 1.0, "de": 1.0, "lang": 1.0, "gender": 1.0})


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
        assert len(mats) == 16 and all(m.shape[1] == 40 for m in mats.values())
        # features cover exactly the alignment frames of every utterance
        ali = dict(AlignmentDir(proj / "corpus" / lang / "ali").pdf_alignments())
        assert {k: len(v) for k, v in ali.items()} == {k: m.shape[0] for k, m in mats.items()}
        stats = dict(kaldiio.load_scp(str(feats / "cmvn.scp")))
        assert sorted(stats) == ["f1", "f2", "f3", "f4", "m1", "m2", "m3", "m5"]
        assert sum(s[0, -1] for s in stats.values()) == sum(m.shape[0] for m in mats.values())
        assert (feats / "cmvn_opts").read_text().strip() == "--norm-means=false --norm-vars=false"
        assert (proj / "exp" / "data" / lang / "split2" / "2" / "wav.scp").is_file()
        assert not list(proj.rglob(".*.tmp")), "temporary files left behind"


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
    # 2 languages x 2 jobs of features, then every egs archive (2 per task: one per features job)
    # and finalize; not the corpus, the data step or the alignments
    assert jobs == {"features_job": 4, "features": 2, "egs_job": 8, "egs": 4, "merge": 1, "train": 1,
                    "split": 4, "eval": 4, "export_kaldi": 2, "metrics": 1, "decode_lang": 2, "decode_graph": 2,
                    "decode_nnet": 2, "decode_metrics": 1, "all": 1}


def test_bad_params_fail_before_any_job(tmp_path):
    proj = project_copy(tmp_path, **{**TINY, "merge__weights": {"en": 1.0, "klingon": 0.5}})
    proc = run(["snakemake", "--cores", "1"], proj, check=False)
    assert proc.returncode != 0
    assert "merge.weights.klingon: no such task" in proc.stdout + proc.stderr
    assert not (proj / "corpus").exists()


def test_lint_clean():
    proc = run(["snakemake", "--lint"], REPO)
    assert "Congratulations" in proc.stdout + proc.stderr
