"""One options path per step: params.yaml -> options dataclass -> CLI flags -> the same options.

Defaults live in the dataclasses; the schema's defaults and enums must agree with them,
and every key of a step's params section belongs to exactly one options field.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import pytest
import yaml

from babelflow.config import SCHEMA, load_params, resolve_config, validate_schema
from babelflow.data.options import DataOptions
from babelflow.decode.options import DecodeOptions
from babelflow.demo.options import DemoOptions
from babelflow.egs.options import EgsOptions
from babelflow.errors import BabelflowError
from babelflow.features import FeaturesOptions
from babelflow.gmm.options import AlignOptions, GmmOptions, LangOptions, MonoOptions, TriOptions
from babelflow.lowres import LowresOptions
from babelflow.merge import MergeOptions, parse_task_arg
from babelflow.nnet.modelconfig import ModelConfig
from babelflow.nnet.options import LaunchOptions, PriorsOptions, TrainOptions

REPO = Path(__file__).resolve().parents[1]
ALL = (DemoOptions, DataOptions, FeaturesOptions, EgsOptions, MergeOptions, TrainOptions, LaunchOptions,
       PriorsOptions, GmmOptions, LangOptions, MonoOptions, TriOptions, AlignOptions, DecodeOptions, LowresOptions)
NOT_OPTIONS = {"workdir", "tasks", "model"}  # resolved by config.py (tasks) and ModelConfig (model)


def _schema_leaves(node: dict, prefix: str = "") -> dict[str, dict]:
    """Dotted key -> schema of every params.yaml leaf (a key whose value is not a fixed-key object)."""
    out = {}
    for k, sub in node.get("properties", {}).items():
        key = f"{prefix}{k}"
        if sub.get("type") == "object" and "properties" in sub and k != "bottleneck":
            out.update(_schema_leaves(sub, key + "."))
        else:
            out[key] = sub
    return out


SCHEMA_LEAVES = _schema_leaves(yaml.safe_load(SCHEMA.read_text()))


def _paths(cls) -> dict[str, str]:
    return cls.param_paths()


def test_every_params_key_is_one_option_field():
    owned = [path for cls in ALL for path in _paths(cls).values()]
    assert len(owned) == len(set(owned)), "a params.yaml key belongs to two options fields"
    leaves = {k for k in SCHEMA_LEAVES if k.split(".")[0] not in NOT_OPTIONS}
    assert leaves == set(owned)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_schema_defaults_and_choices_agree_with_the_dataclass(cls):
    default = cls()
    hints_schema = {name: SCHEMA_LEAVES[path] for name, path in _paths(cls).items()}
    for f in cls.__dataclass_fields__.values():
        sub = hints_schema[f.name]
        assert "default" in sub, f"schema: {_paths(cls)[f.name]} has no default"
        assert sub["default"] == getattr(default, f.name), f"{cls.__name__}.{f.name} vs schema default"
        choices = f.metadata.get("choices")
        if choices or "enum" in sub:
            assert sorted(choices or []) == sorted(sub.get("enum", [])), f"{cls.__name__}.{f.name} choices"


def _assert_same(a, b):
    """Every CLI option equal; Kaldi feature options compared as the complete option set they give."""
    for name, f in type(a).__dataclass_fields__.items():
        if not f.metadata.get("cli", True):
            continue
        if isinstance(a, FeaturesOptions) and name == "options":  # Kaldi flags come back as text
            assert a.feature_config() == b.feature_config()
        else:
            assert getattr(a, name) == getattr(b, name), (type(a).__name__, name)


def _round_trip(cls, opts):
    parser = argparse.ArgumentParser()
    cls.add_arguments(parser)
    return cls.from_args(parser.parse_args(opts.to_args()))


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_params_render_to_flags_that_parse_back(cls):
    params = validate_schema(load_params(REPO / "params.yaml"))
    opts = cls.from_params(params)
    _assert_same(opts, _round_trip(cls, opts))


def test_non_default_values_survive_the_round_trip():
    cases = [
        TrainOptions(num_epochs=7, optimizer="sgd", freeze_trunk=True, init="a b/c.pt", tasks=["en", "de"],
                     lr_final=1e-5, param_init="kaldi", bias_stddev=0.5, natural_gradient=True, max_change=0.75,
                     max_change_output=1.5, max_param_change=2.0, max_grad_norm=0.0),
        EgsOptions(left_context=3, right_context=0, chunking="random", min_chunk=7, dtype="float32"),
        MergeOptions(block_size=3, sampler="temperature", temperature=0.5, num_archives=9),
        PriorsOptions(method="counts", floor=1e-3),
        DemoOptions(langs={"en": "en-gb", "xx": "de"}, voices=["m1", "f1"], utts_per_lang=9),
        FeaturesOptions(type="mfcc", options={"num_ceps": 20, "snip_edges": False, "low_freq": 40.5},
                        cmvn_opts="--norm-means=true --norm-vars=false"),
    ]
    for opts in cases:
        _assert_same(opts, _round_trip(type(opts), opts))


def test_an_empty_list_is_rendered_not_dropped():
    """[] in params must reach the command as [], not as the command's default list."""
    from babelflow.decode.options import DecodeOptions

    assert "--word-ins-penalty=" in DecodeOptions(word_ins_penalty=[]).to_args()
    for opts in (MonoOptions(realign_iters=[]), TriOptions(realign_iters=[]), DecodeOptions(word_ins_penalty=[])):
        _assert_same(opts, _round_trip(type(opts), opts))


def test_model_flags_round_trip():
    for path in (REPO / "workflow" / "configs" / "babel_multilang.yaml",):
        mc = ModelConfig.from_dict(yaml.safe_load(path.read_text()))
        parser = argparse.ArgumentParser()
        ModelConfig.add_arguments(parser)
        assert ModelConfig.from_args(parser.parse_args(mc.to_args())) == mc
    params = validate_schema(load_params(REPO / "params.yaml"))
    mc = resolve_config(params, check_paths=False).model_config
    parser = argparse.ArgumentParser()
    ModelConfig.add_arguments(parser)
    assert ModelConfig.from_args(parser.parse_args(mc.to_args())) == mc


def test_merge_task_argument():
    assert parse_task_arg("en=exp/egs/en:0.5") == ("en", "exp/egs/en", 0.5)
    assert parse_task_arg("exp/egs/de") == ("de", "exp/egs/de", 1.0)
    assert parse_task_arg("lid=exp/egs/lid") == ("lid", "exp/egs/lid", 1.0)
    with pytest.raises(BabelflowError, match=r"--task en=x:heavy: weight 'heavy' is not a number"):
        parse_task_arg("en=x:heavy")


def test_rendered_merge_args_follow_the_task_order():
    from babelflow.merge import task_args

    params = validate_schema(load_params(REPO / "params.yaml"))
    params["merge"]["weights"] = {**params["merge"]["weights"], "de": 0.25}
    p = resolve_config(params, check_paths=False)
    args = task_args(p)
    tasks = [a for a in args if a.startswith("--task=")]
    assert tasks[:2] == ["--task=en=exp/egs/en:1.0", "--task=de=exp/egs/de:0.25"] and len(tasks) == len(p.tasks)
    assert "--block-size=64" in args and not any(a.startswith("--temperature") for a in args)


def test_step_errors_name_params_yaml():
    params = validate_schema(load_params(REPO / "params.yaml"))
    bad = copy.deepcopy(params)
    bad["train"]["lr_final"] = 1.0
    with pytest.raises(BabelflowError, match=r"^params\.yaml: train\.lr_final: larger than train\.lr_initial"):
        resolve_config(bad, check_paths=False)
    bad = copy.deepcopy(params)
    bad["egs"]["utterance"]["min_chunk"] = 999
    with pytest.raises(BabelflowError, match=r"^params\.yaml: egs\.utterance\.min_chunk"):
        resolve_config(bad, check_paths=False)
