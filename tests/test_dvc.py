"""DVC on a real repo (git + dvc, a local remote) made from a copy of the project, tiny corpus.

The tests run in file order on one repo: build, no-ops, what reruns after a change,
an experiment, then push / clone / pull. No network is used.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import yaml

from .conftest import dvc_project, planned_jobs, run
from .test_pipeline import TINY

pytestmark = pytest.mark.slow

# one language, a frame and an utterance task, one epoch: the smallest chain with every stage
DVC_TINY = {**TINY, "demo__langs": {"en": "en-us"}, "demo__utterance_tasks": ["gender"], "demo__low_resource": {},
            "merge__weights": {"en": 1.0, "gender": 1.0}, "train__num_epochs": 1, "decode__gmm": False}
TASKS = ("en", "gender")
ALL_STAGES = ["corpus", "data", "features", "egs", "merge", "train", "models", "export", "decode"]


def _after_models(*stages: str) -> tuple[list[str], list[str]]:
    """The stages DVC runs: these, then export and decode (both only need the models) in either order."""
    return [*stages, "export", "decode"], [*stages, "decode", "export"]


def _ran(out: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", out)


def _edit_params(proj, dotted: str, value) -> None:
    params = yaml.safe_load((proj / "params.yaml").read_text())
    node = params
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A committed, fully reproduced DVC repo; the remote is a sibling directory, as in the project."""
    root = tmp_path_factory.mktemp("dvc")
    (root / "proj").mkdir()
    proj = dvc_project(root / "proj", **DVC_TINY)
    proc = run(["dvc", "repro"], proj)
    run(["git", "add", "-A"], proj)
    run(["git", "commit", "-q", "-m", "dvc repro"], proj)
    return proj, proc.stdout + proc.stderr


def test_repro_builds_everything_then_nothing_is_left(repo):
    proj, out = repo
    assert _ran(out) in _after_models(*ALL_STAGES[:-2])
    assert (proj / "exp" / "kaldi" / "en" / "final.mdl").is_file()
    assert "Data and pipelines are up to date" in run(["dvc", "status"], proj).stdout
    again = run(["dvc", "repro"], proj)
    assert _ran(again.stdout) == [], again.stdout
    assert planned_jobs(proj) == {}, "Snakemake disagrees with DVC after dvc repro"


def test_editing_a_step_module_reruns_that_step_in_both_tools(repo):
    proj, _ = repo
    module = proj / "src" / "babelflow" / "merge.py"
    original = module.read_text()
    try:
        module.write_text(original + "\n# an edit\n")
        status = run(["dvc", "status", "--json"], proj).stdout
        changed = json.loads(status)
        assert set(changed) == {"merge"}, changed
        assert "src/babelflow/merge.py" in json.dumps(changed["merge"])
        jobs = planned_jobs(proj)
        assert "merge" in jobs and "train" in jobs
        assert not {"demo_corpus", "data", "features_job", "features", "egs_job", "egs"} & set(jobs), jobs
    finally:
        module.write_text(original)


def test_a_feature_option_reruns_from_features_on(repo):
    proj, _ = repo
    params = (proj / "params.yaml").read_text()
    try:
        _edit_params(proj, "features.options", {"num_mel_bins": 30, "dither": 0})
        jobs = planned_jobs(proj)  # Snakemake's params trigger
        assert {"features_job", "features", "egs_job", "merge", "train", "split"} <= set(jobs)
        assert not {"demo_corpus", "data"} & set(jobs), jobs
        out = run(["dvc", "repro"], proj).stdout
        assert _ran(out) in _after_models("features", "egs", "merge", "train", "models")
        assert (proj / "exp" / "feats" / "en" / "info" / "feat_dim").read_text().strip() == "30"
    finally:
        (proj / "params.yaml").write_text(params)
    # back to the committed params: DVC's run-cache restores the old outputs without running,
    # and `babelflow touch` brings Snakemake's view (mtimes, recorded params) in line
    out = run(["dvc", "repro"], proj).stdout
    assert _ran(out) == [] and "is cached" in out, out
    assert "Data and pipelines are up to date" in run(["dvc", "status"], proj).stdout
    run(["babelflow", "touch"], proj)
    assert planned_jobs(proj) == {}
    assert "Data and pipelines are up to date" in run(["dvc", "status"], proj).stdout


def test_a_task_weight_reruns_merge_and_after_as_an_experiment(repo):
    proj, _ = repo
    _edit_params(proj, "merge.weights.en", 0.3)
    jobs = planned_jobs(proj)
    assert {"merge", "train", "split", "eval", "export_kaldi", "metrics"} <= set(jobs)
    assert not {"demo_corpus", "data", "features_job", "features", "egs_job", "egs"} & set(jobs), jobs
    run(["git", "checkout", "params.yaml"], proj)

    out = run(["dvc", "exp", "run", "-n", "en-w03", "-S", "merge.weights.en=0.3"], proj).stdout
    assert _ran(out) in _after_models("merge", "train", "models"), out
    table = json.loads(run(["dvc", "exp", "show", "--json"], proj).stdout)
    rows = {}
    for entry in table:
        for e in [entry] + [x for exp in entry.get("experiments") or [] for x in exp.get("revs", [])]:
            data = e.get("data") or {}
            name = e.get("name") or e.get("rev")
            rows[name] = data
    exp_row = next(v for k, v in rows.items() if k == "en-w03")
    assert exp_row["params"]["params.yaml"]["data"]["merge"]["weights"]["en"] == 0.3
    models = exp_row["metrics"]["exp/models/metrics.json"]["data"]
    assert set(models) == set(TASKS) and "valid_accuracy" in models["en"]
    md = run(["dvc", "exp", "show", "--md", "--only-changed"], proj).stdout
    assert "en-w03" in md and "merge.weights.en" in md and "en.valid_accuracy" in md
    diff = run(["dvc", "metrics", "diff", "HEAD", "--all", "--md"], proj).stdout  # the experiment is applied
    for task in TASKS:
        assert f"{task}.valid_accuracy" in diff
    run(["babelflow", "touch"], proj)  # dvc exp run ran Snakemake itself; touch is harmless
    assert planned_jobs(proj) == {}
    run(["git", "add", "-A"], proj)
    run(["git", "commit", "-q", "-m", "en weight 0.3"], proj)


def test_plots_render_in_both_tools(repo, tmp_path):
    proj, _ = repo
    run(["dvc", "plots", "show", "-o", str(tmp_path / "dvc_plots")], proj)
    html = (tmp_path / "dvc_plots" / "index.html").read_text()
    for plot in ("valid_accuracy", "allocation", "confusion_gender"):
        assert plot in html
    assert list((tmp_path / "dvc_plots" / "static").glob("*curves.png")), "the PNG curves (no CDN needed)"
    report = tmp_path / "report.html"
    run(["snakemake", "--cores", "1", "--report", str(report)], proj)
    text = report.read_text()
    assert "curves.png" in text and "confusion.png" in text
    assert "Training curves per task" in text and "Confusion matrix of the standalone" in text


def test_push_clone_pull_restores_models_and_both_tools_agree(repo):
    proj, _ = repo
    run(["dvc", "push"], proj)
    assert (proj.parent / "babelflow-dvc-remote" / "files").is_dir(), "the default remote is the sibling directory"
    clone = proj.parent / "clone"
    shutil.rmtree(clone, ignore_errors=True)
    run(["git", "clone", "-q", str(proj), str(clone)], proj.parent)
    run(["dvc", "pull"], clone)
    for task in TASKS:
        a, b = proj / "exp" / "models" / task / "model.pt", clone / "exp" / "models" / task / "model.pt"
        assert a.read_bytes() == b.read_bytes(), task
    for task in ("en",):
        assert ((proj / "exp/kaldi" / task / "final.mdl").read_bytes()
                == (clone / "exp/kaldi" / task / "final.mdl").read_bytes())
    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone).stdout
    # DVC wrote the outputs in its own order: make the models the oldest files, as an unlucky pull would,
    # then a bare `snakemake -n` (no `babelflow touch`) must still have nothing to do
    for path in (clone / "exp").rglob("*"):
        os.utime(path, (1e9, 1e9) if "models" in path.parts else None)
    assert planned_jobs(clone) == {}
    models = clone / "exp" / "models" / "en" / "model.pt"
    assert models.stat().st_mtime > (clone / "exp" / "merged").stat().st_mtime
    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone).stdout
