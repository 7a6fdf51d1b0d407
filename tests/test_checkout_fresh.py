"""After a clone + `dvc pull`, Snakemake must see DVC's outputs as current (babelflow.smk.mark_checkout_fresh)."""

from __future__ import annotations

import os

from babelflow.smk import _stage_order, mark_checkout_fresh

from .conftest import run


def _two_stage_repo(root):
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    (root / "src.txt").write_text("x\n")
    run(["dvc", "stage", "add", "-q", "-n", "b", "-d", "a", "-o", "b", "mkdir -p b && cp a/f b/f"], root)
    run(["dvc", "stage", "add", "-q", "-n", "a", "-d", "src.txt", "-o", "a", "mkdir -p a && cp src.txt a/f"], root)
    run(["dvc", "repro", "-q"], root)


def test_outputs_get_their_stage_order_only_when_dvc_status_is_clean(tmp_path):
    _two_stage_repo(tmp_path)
    a, b = tmp_path / "a" / "f", tmp_path / "b" / "f"
    os.utime(b, (1e9, 1e9))  # pulled in the wrong order: the later stage's output is older
    assert mark_checkout_fresh(tmp_path) == 2
    assert b.stat().st_mtime > a.stat().st_mtime > (tmp_path / "src.txt").stat().st_mtime
    assert (tmp_path / "b").stat().st_mtime == b.stat().st_mtime

    os.utime(b, (1e9, 1e9))
    (tmp_path / "src.txt").write_text("changed\n")  # stale: dvc status is not clean, nothing is touched
    assert mark_checkout_fresh(tmp_path) == 0
    assert b.stat().st_mtime == 1e9

    (tmp_path / "src.txt").write_text("x\n")
    (tmp_path / ".snakemake").mkdir()  # Snakemake has run here: its own records decide
    assert mark_checkout_fresh(tmp_path) == 0
    assert b.stat().st_mtime == 1e9


def test_stage_order_follows_dependencies_not_file_order():
    stages = {"export": (["exp/models"], ["exp/kaldi"]), "models": (["exp/train/final.pt"], ["exp/models/en"]),
              "train": (["exp/merged"], ["exp/train/final.pt"]), "merge": (["params.yaml"], ["exp/merged"])}
    assert _stage_order(stages) == ["merge", "train", "models", "export"]
