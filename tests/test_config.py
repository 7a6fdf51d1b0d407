"""params.yaml validation: every error names the key, before any job runs."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from babelflow.config import load_params, resolve_config, validate_schema
from babelflow.demo.options import DemoOptions
from babelflow.errors import BabelflowError
from babelflow.features import FeaturesOptions

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def params():
    return load_params(REPO / "params.yaml")


def _user_config(params, tmp_path):
    """Two Kaldi-style data sets with alignment dirs on disk (contents are not read here)."""
    p = copy.deepcopy(params)
    for lang in ("101-cantonese", "102-assamese"):
        (tmp_path / "data" / lang).mkdir(parents=True)
        (tmp_path / "exp" / lang / "tri5_ali").mkdir(parents=True)
    p["data"]["dirs"] = {lang: str(tmp_path / "data" / lang) for lang in ("101-cantonese", "102-assamese")}
    p["tasks"] = {
        lang: {"kind": "frame", "data": lang, "ali": str(tmp_path / "exp" / lang / "tri5_ali")}
        for lang in ("101-cantonese", "102-assamese")
    }
    p["tasks"]["lid"] = {"kind": "utterance", "data": ["101-cantonese", "102-assamese"], "labels": "utt2lang"}
    p["merge"]["weights"] = {}  # the demo tasks' weights name tasks this config does not have
    return p


def test_default_params_give_demo_tasks(params):
    pipe = resolve_config(validate_schema(params))
    assert pipe.demo
    assert list(pipe.tasks) == ["en", "de", "es", "fr", "lang", "voice", "gender", "rate"]
    assert pipe.tasks["en"].ali == "corpus/en/ali" and pipe.tasks["lang"].data == ["en", "de", "es", "fr"]
    assert pipe.options(DemoOptions).num_utts == 200
    args = pipe.options(FeaturesOptions).to_args()
    assert "--num-mel-bins=40" in args and "--dither=0" in args


def test_user_tasks_and_weights(params, tmp_path):
    p = _user_config(params, tmp_path)
    p["merge"]["weights"] = {"101-cantonese": 1.0, "102-assamese": 0.5, "lid": 0.3}
    pipe = resolve_config(validate_schema(p))
    assert not pipe.demo
    assert [t.weight for t in pipe.tasks.values()] == [1.0, 0.5, 0.3]


@pytest.mark.parametrize("edit, match", [
    (lambda p: p["data"].update(nj="two"), r"data\.nj: 'two' is not of type 'integer'"),
    (lambda p: p.update(featurs={}), r"Additional properties are not allowed \('featurs'"),
    (lambda p: p["features"].update(type="plp"), r"features\.type: 'plp' is not one of"),
    (lambda p: p["merge"].update(weights={"101-cantonese": 0}),
     r"merge\.weights\.101-cantonese: 0 is less than or equal"),
    (lambda p: p["merge"].update(weights={"101-cantonese": -1}), r"merge\.weights\.101-cantonese"),
    (lambda p: p["tasks"]["lid"].update(kind="sentence"), r"tasks\.lid\.kind: 'sentence' is not one of"),
])
def test_schema_errors_name_the_key(params, tmp_path, edit, match):
    p = _user_config(params, tmp_path)
    edit(p)
    with pytest.raises(BabelflowError, match=match):
        resolve_config(validate_schema(p))


@pytest.mark.parametrize("edit, match", [
    (lambda p, t: p["merge"].update(weights={"101-cantonese": 1, "102-assamese": 1, "lid": 1, "klingon": 1}),
     r"merge\.weights\.klingon: no such task"),
    (lambda p, t: p["merge"].update(weights={"101-cantonese": 1, "102-assamese": float("nan"), "lid": 1}),
     r"merge\.weights\.102-assamese: weight must be a finite number > 0, got nan"),
    (lambda p, t: p["merge"].update(weights={"101-cantonese": 1.0}),
     r"merge\.weights: no weight for task\(s\) 102-assamese, lid"),
    (lambda p, t: p["data"]["dirs"].update({"102-assamese": str(t / "nowhere")}),
     r"data\.dirs\.102-assamese: directory '.*nowhere' not found"),
    (lambda p, t: p["tasks"]["lid"].update(data=["101-cantonese", "103-bengali"]),
     r"tasks\.lid\.data: unknown data set '103-bengali'"),
    (lambda p, t: p["tasks"]["101-cantonese"].update(ali=str(t / "no_ali")),
     r"tasks\.101-cantonese\.ali: alignment dir '.*no_ali' not found"),
    (lambda p, t: p["tasks"]["101-cantonese"].pop("ali"), r"tasks\.101-cantonese\.ali: required for a frame task"),
    (lambda p, t: p["tasks"]["lid"].pop("labels"), r"tasks\.lid\.labels: required for an utterance task"),
    (lambda p, t: p["features"]["options"].update(num_mel_binz=40),
     r"features\.options: unknown fbank option 'num_mel_binz'"),
    (lambda p, t: p["features"].update(config=str(t / "missing.conf")),
     r"features\.config: file '.*missing\.conf' not found"),
    (lambda p, t: p["features"].update(cmvn_opts="--norm-vars=true --norm-means=false"), r"features\.cmvn_opts"),
    (lambda p, t: p.update(tasks={}), r"tasks: empty, but data\.dirs is set"),
    (lambda p, t: p["tasks"]["lid"].update(ali="auto"), r"tasks\.lid\.ali: only frame tasks have alignments"),
    (lambda p, t: p["tasks"]["101-cantonese"].update(ali="auto"), r"tasks\.101-cantonese\.lexicon: required with"),
    (lambda p, t: p["tasks"]["101-cantonese"].update(test="nowhere"), r"tasks\.101-cantonese\.test: unknown data"),
    (lambda p, t: p["decode"].update(tasks=["lid"]), r"decode\.tasks: 'lid' is an utterance task"),
    (lambda p, t: p["decode"].update(tasks=["101-cantonese"]), r"tasks\.101-cantonese\.test: required to decode"),
    (lambda p, t: p["tasks"]["101-cantonese"].update(egs=str(t / "no_egs")),
     r"tasks\.101-cantonese\.egs: Kaldi egs dir '.*no_egs' not found"),
    (lambda p, t: p["tasks"]["lid"].update(egs=str(t)), r"tasks\.lid\.egs: only frame tasks import Kaldi egs"),
    (lambda p, t: p["tasks"]["101-cantonese"].update(egs=str(t), ali="ark:ali.ark"),
     r"tasks\.101-cantonese\.ali: with egs, the alignment dir the egs were made from"),
    (lambda p, t: p["tasks"]["101-cantonese"].update(egs=str(t)),
     r"tasks\.101-cantonese\.egs: '.*info/left_context' not found \(not a Kaldi egs dir"),
    (lambda p, t: (p["tasks"]["101-cantonese"].update(egs=str(t / "e")), (t / "e" / "info").mkdir(parents=True),
                   (t / "e" / "info" / "left_context").write_text("4\n")),
     r"tasks\.101-cantonese\.egs: .*info/left_context is 4, but the egs made here get left_context 16 "
     r"\(set egs\.left_context: 4"),
])
def test_semantic_errors_name_the_key(params, tmp_path, edit, match):
    p = _user_config(params, tmp_path)
    edit(p, tmp_path)
    with pytest.raises(BabelflowError, match=match):
        resolve_config(validate_schema(p))


def test_cli_check_config_clean_error(params, tmp_path):
    p = _user_config(params, tmp_path)
    p["merge"]["weights"] = {"101-cantonese": 1, "102-assamese": 1, "lid": 1, "klingon": 1}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    proc = subprocess.run([sys.executable, "-m", "babelflow.cli", "check-config", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "params.yaml: merge.weights.klingon: no such task" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("tasks:\n  en: {kind: frame, data: en, ali: a}\n  de: {kind: frame, data: de, ali: b}\n"
                 "  en: {kind: frame, data: en2, ali: c}\n")
    with pytest.raises(BabelflowError, match=r"params\.yaml:4: 'en' given twice \(also on line 2\)"):
        load_params(f)


def test_schema_errors_name_the_yaml_line(tmp_path):
    from babelflow.config import load_pipeline

    text = (REPO / "params.yaml").read_text().replace("  nj: 2\n", "  nj: two\n")
    (tmp_path / "params.yaml").write_text(text)
    line = text.splitlines().index("  nj: two") + 1
    with pytest.raises(BabelflowError, match=rf"^params\.yaml:{line}: data\.nj: 'two' is not of type 'integer'"):
        load_pipeline(tmp_path / "params.yaml", check_paths=False)
