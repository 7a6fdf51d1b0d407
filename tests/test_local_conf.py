"""Kaldi's babel_multilang local.conf as the source of the task weights (merge.local_conf)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from babelflow.config import load_params, resolve_config, validate_schema
from babelflow.errors import BabelflowError
from babelflow.kaldi.local_conf import read_local_conf

from .conftest import run

REPO = Path(__file__).resolve().parents[1]
RECIPE = """# local.conf of egs/babel_multilang/s5 (sourced by run_tdnn_multilingual.sh)
lang_list=(101-cantonese 102-assamese   # first two
           103-bengali)
lang2weight="0.3,0.3,0.4"
decode_lang_list=(101-cantonese 103-bengali)
use_pitch=true
export use_ivector='false'
"""


def test_reads_the_recipes_arrays_and_weights(tmp_path):
    f = tmp_path / "local.conf"
    f.write_text(RECIPE)
    conf = read_local_conf(f)
    assert conf.lang_list == ["101-cantonese", "102-assamese", "103-bengali"]
    assert conf.weights() == {"101-cantonese": 0.3, "102-assamese": 0.3, "103-bengali": 0.4}
    assert conf.decode_lang_list == ["101-cantonese", "103-bengali"]
    assert conf.values["use_pitch"] == "true" and conf.values["use_ivector"] == "false"
    assert conf.where("lang2weight") == f"{f}:4"
    f.write_text("lang_list=(a b c)\n")
    assert read_local_conf(f).weights() == {"a": 1.0, "b": 1.0, "c": 1.0}  # combine_egs.sh's default


@pytest.mark.parametrize("text, match", [
    ('lang_list=(a b)\nlang2weight="0.5"\n', r"local\.conf:2: lang2weight has 1 weight\(s\), lang_list \(.*:1\) 2"),
    ('lang_list=(a b)\nlang2weight="0.5,-1"\n', r"local\.conf:2: lang2weight of b: expected a number > 0, got '-1'"),
    ('lang_list=(a b)\n[ -f x ] && lang_list=(c)\n', r"local\.conf:2: not an assignment"),
    ("lang_list=(a $(ls))\n", r"local\.conf:1: lang_list: shell expansion"),
    ("lang_list=(a b\n", r"local\.conf:1: lang_list: unterminated"),
    ("use_pitch=true\n", r"local\.conf: no lang_list"),
])
def test_what_it_cannot_read_is_one_line_naming_the_line(tmp_path, text, match):
    f = tmp_path / "local.conf"
    f.write_text(text)
    with pytest.raises(BabelflowError, match=match):
        read_local_conf(f).weights()


def _user(tmp_path, local_conf: str) -> dict:
    p = load_params(REPO / "params.yaml")
    langs = ("101-cantonese", "102-assamese", "103-bengali")
    for lang in langs:
        (tmp_path / "data" / lang).mkdir(parents=True)
        (tmp_path / "exp" / lang / "tri5_ali").mkdir(parents=True)
    p["data"]["dirs"] = {lang: str(tmp_path / "data" / lang) for lang in langs}
    p["tasks"] = {lang: {"kind": "frame", "data": lang, "ali": str(tmp_path / "exp" / lang / "tri5_ali")}
                  for lang in langs}
    p["tasks"]["lid"] = {"kind": "utterance", "data": list(langs), "labels": "utt2lang"}
    p["merge"]["weights"] = {}
    (tmp_path / "local.conf").write_text(local_conf)
    p["merge"]["local_conf"] = str(tmp_path / "local.conf")
    return p


def test_the_weights_come_from_local_conf(tmp_path):
    p = _user(tmp_path, RECIPE)
    pipe = resolve_config(validate_schema(p))
    assert {t: x.weight for t, x in pipe.tasks.items()} == {
        "101-cantonese": 0.3, "102-assamese": 0.3, "103-bengali": 0.4, "lid": 1.0}
    q = copy.deepcopy(p)
    q["merge"]["weights"] = {"lid": 0.2}  # the tasks local.conf does not name
    assert resolve_config(validate_schema(q)).tasks["lid"].weight == 0.2


@pytest.mark.parametrize("edit, match", [
    (lambda p: p["merge"].update(weights={"lid": 0.2, "102-assamese": 1.0}),
     r"params\.yaml: merge\.weights\.102-assamese: also weighed by .*local\.conf:4: give it in one place"),
    (lambda p: p["tasks"].pop("103-bengali"),
     r"params\.yaml: merge\.local_conf: .*local\.conf:2: lang_list names '103-bengali', not a task"),
    (lambda p: p["merge"].update(local_conf="nowhere.conf"), r"params\.yaml: merge\.local_conf: file 'nowhere\.conf'"),
])
def test_conflicts_name_both_places(tmp_path, edit, match):
    p = _user(tmp_path, RECIPE)
    edit(p)
    with pytest.raises(BabelflowError, match=match):
        resolve_config(validate_schema(p))


def test_import_local_conf_prints_the_params_lines(tmp_path):
    import yaml

    (tmp_path / "local.conf").write_text(RECIPE)
    out = run(["babelflow", "import-local-conf", "local.conf"], tmp_path).stdout
    assert out.startswith("# local.conf: lang_list of 3; weights (lang2weight): 101-cantonese=0.3,")
    assert yaml.safe_load(out) == {"merge": {"local_conf": "local.conf"},
                                   "decode": {"tasks": ["101-cantonese", "103-bengali"]}}
