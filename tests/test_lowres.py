"""The low-resource comparison (babelflow.lowres): which systems train on what, its config checks,
and the WER table + plot it is reported in. The workflow run is in test_pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from babelflow.config import load_params, resolve_config, validate_schema
from babelflow.decode.report import collect_wer, write_wer
from babelflow.errors import BabelflowError
from babelflow.lowres import SYSTEMS, decode_dirs, lowres_tasks, system_train_options

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def params():
    return load_params(REPO / "params.yaml")


def test_the_demo_targets_its_low_resource_language(params):
    p = resolve_config(validate_schema(params), check_paths=False)
    assert lowres_tasks(p) == ["de"]
    rows = decode_dirs(p, p.layout)
    assert [(t, s) for t, s, _ in rows] == [("de", s) for s in SYSTEMS]
    assert dict((s, d) for _, s, d in rows) == {
        "gmm": "exp/decode/de/decode_gmm_test", "mono": "exp/lowres/mono/decode/de",
        "multi": "exp/decode/de/decode_test", "multi_frozen": "exp/lowres/multi_frozen/decode/de"}


def test_systems_differ_from_the_main_run_only_in_tasks_init_and_frozen_trunk(params):
    params["train"].update(num_epochs=7, lr_initial=1e-3)
    p = resolve_config(validate_schema(params), check_paths=False)
    mono = system_train_options(p, "mono")
    base = system_train_options(p, "multi_base")
    frozen = system_train_options(p, "multi_frozen", "exp/lowres/multi_base/train/final.pt")
    assert mono.tasks == ["de"] and not mono.freeze_trunk and mono.init is None
    assert base.tasks == ["en", "es", "fr"] and not base.freeze_trunk  # the other languages
    params["lowres"]["base_tasks"] = "all"
    every = system_train_options(resolve_config(validate_schema(params), check_paths=False), "multi_base")
    assert every.tasks == ["en", "es", "fr", "lang", "voice", "gender", "rate"]
    assert frozen.tasks == ["de"] and frozen.freeze_trunk and frozen.init.endswith("multi_base/train/final.pt")
    for o in (mono, base, frozen):  # same network schedule: epochs (over the target's data), rates, seed
        assert (o.num_epochs, o.lr_initial, o.seed) == (7, 1e-3, 0)
    with pytest.raises(ValueError, match="no lowres system 'multi'"):
        system_train_options(p, "multi")


def test_no_gmm_row_without_decode_gmm(params):
    params["decode"]["gmm"] = False
    p = resolve_config(validate_schema(params), check_paths=False)
    assert [s for _, s, _ in decode_dirs(p, p.layout)] == ["mono", "multi", "multi_frozen"]


@pytest.mark.parametrize("edit, match", [
    (lambda p: p["demo"].update(low_resource={"xx": 40}), r"^params\.yaml: demo\.low_resource: xx not in demo\.langs"),
    (lambda p: p["lowres"].update(tasks=["lang"]), r"^params\.yaml: lowres\.tasks: 'lang' is not decoded"),
    (lambda p: p["demo"].update(low_resource={"xx": 4}), r"demo\.low_resource\.xx: 4 is less than the minimum"),
])
def test_bad_lowres_config_names_the_key(params, edit, match):
    edit(params)
    with pytest.raises(BabelflowError, match=match):
        resolve_config(validate_schema(params), check_paths=False)


def test_a_target_needs_other_tasks_for_the_shared_trunk(params):
    params["demo"].update(langs={"en": "en-us"}, low_resource={"en": 40})
    params["merge"]["weights"] = {}
    with pytest.raises(BabelflowError, match=r"lowres\.tasks: no task is left for multi_base \(base_tasks: frame\)"):
        resolve_config(validate_schema(params), check_paths=False)  # the utterance tasks are not languages
    params["lowres"]["base_tasks"] = "all"
    assert system_train_options(resolve_config(validate_schema(params), check_paths=False), "multi_base").tasks == [
        "lang", "voice", "gender", "rate"]


def _decode_dir(root: Path, name: str, wer: float) -> str:
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"wer": wer, "ser": 50.0}))
    return str(d)


def test_wer_table_json_and_plot(tmp_path):
    items = [f"de.{s}={_decode_dir(tmp_path, s, w)}" for s, w in zip(SYSTEMS, (12.5, 9.0, 4.25, 6.0))]
    items.append(f"en.wer={_decode_dir(tmp_path, 'en', 1.5)}")
    out = tmp_path / "out" / "lowres.json"
    out.parent.mkdir()
    write_wer(out, collect_wer(items), out.with_suffix(".png"))
    assert json.loads(out.read_text()) == {"de": dict(zip(SYSTEMS, (12.5, 9.0, 4.25, 6.0))), "en": {"wer": 1.5}}
    assert out.with_suffix(".tsv").read_text().splitlines() == [
        "system\ttask\twer", "gmm\tde\t12.5", "mono\tde\t9.0", "multi\tde\t4.25", "multi_frozen\tde\t6.0",
        "nnet\ten\t1.5"]
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.parent.iterdir()) == ["lowres.json", "lowres.png", "lowres.tsv"]


@pytest.mark.parametrize("item, match", [
    ("de.mono", r"expected TASK\.KEY=DECODE_DIR, got 'de\.mono'"),
    ("mono=/x", r"expected TASK\.KEY=DECODE_DIR"),
    ("de.mono=/nonexistent/dir", r"/nonexistent/dir/metrics\.json: no WER to collect"),
])
def test_bad_results_are_one_clear_error(item, match):
    with pytest.raises(BabelflowError, match=match):
        collect_wer([item])
