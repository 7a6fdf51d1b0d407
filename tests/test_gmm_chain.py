"""`ali: auto` end to end: the demo's frame tasks trained on alignments babelflow made itself
(lexicon -> lang -> mono -> tri -> align), under a real `snakemake --cores 2`."""

from __future__ import annotations

import json

import pytest

from babelflow.kaldi.alignments import AlignmentDir
from babelflow.kaldi.tree import read_tree

from .conftest import planned_jobs, project_copy, run
from .test_pipeline import TINY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    proj = project_copy(tmp_path_factory.mktemp("auto"), **{**TINY, "demo__ali": "auto", "demo__low_resource": {}})
    run(["snakemake", "--cores", "2"], proj)
    return proj


def test_tasks_train_on_the_gmm_alignments(built):
    for lang in ("en", "de"):
        ali = built / "exp" / "gmm" / lang / "tri_ali"
        tree = read_tree(ali / "tree")
        assert (tree.context_width, tree.central_position) == (3, 1)
        assert AlignmentDir(ali).num_pdfs == int((built / "exp" / "egs" / lang / "num_pdfs").read_text())
        # the model dir carries the GMM's tree and phones, what mkgraph needs
        assert (built / "exp" / "models" / lang / "tree").read_bytes() == (ali / "tree").read_bytes()
        assert (built / "exp" / "kaldi" / lang / "tree").is_file()


def test_alignment_quality_is_measured_against_the_true_timings(built):
    metrics = json.loads((built / "exp" / "gmm" / "metrics.json").read_text())
    assert set(metrics) == {"en", "de"}
    for lang in ("en", "de"):
        for stage in ("mono", "tri"):
            m = metrics[lang][stage]
            assert m["num_utts"] == 16 and 0.0 <= m["within_20ms"] <= m["within_50ms"] <= 1.0
            assert m["frame_agreement"] > 0.35  # equal alignment gives ~0.3 on this corpus
    models = json.loads((built / "exp" / "models" / "metrics.json").read_text())
    for lang in ("en", "de"):
        assert 0.0 < models[lang]["valid_phone_accuracy"] <= 1.0  # against the true phones, not the GMM's


def test_the_gmm_baseline_is_decoded_beside_the_network(built):
    wer = json.loads((built / "exp" / "decode" / "metrics.json").read_text())
    assert set(wer) == {"en", "de"}
    for lang in ("en", "de"):
        assert set(wer[lang]) == {"wer", "gmm_wer"}
        gmm = json.loads((built / "exp" / "decode" / lang / "decode_gmm_test" / "metrics.json").read_text())
        assert gmm["model"] == "gmm" and gmm["num_decoded"] == 8
    table = (built / "exp" / "decode" / "metrics.tsv").read_text().splitlines()
    assert table[0] == "system\ttask\twer" and len(table) == 5


def test_rerun_is_a_noop(built):
    assert planned_jobs(built) == {}


def test_a_gmm_option_reruns_tri_and_what_follows_only(built):
    params = (built / "params.yaml").read_text()
    edited = params.replace("num_leaves: 40", "num_leaves: 32")
    assert edited != params
    (built / "params.yaml").write_text(edited)
    try:
        jobs = planned_jobs(built)
    finally:
        (built / "params.yaml").write_text(params)
    assert "gmm_mono" not in jobs and "gmm_lang" not in jobs and "features_job" not in jobs
    assert jobs["gmm_tri"] == 2 and jobs["egs_ali"] == 2 and jobs["train"] == 1
