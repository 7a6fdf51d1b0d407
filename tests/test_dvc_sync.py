"""dvc.yaml and the Snakemake rules agree: generated outs/deps, and params checked by probing.

The probe changes one params.yaml key at a time, rebuilds the Snakemake DAG in-process and
sees which rules' jobs (outputs or rendered params) change: each such rule's step must list
the key in its DVC ``params``, and each key a step lists must change one of its rules.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from babelflow.dvcsync import build_stages, dvc_sync
from babelflow.errors import BabelflowError
from babelflow.smk import Job, workflow_jobs
from babelflow.steps import STEP_OF_RULE, STEPS

from .conftest import REPO


def test_committed_dvc_yaml_is_current():
    assert dvc_sync(REPO, check=True)


def _params(**edits):
    cfg = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in edits.items():
        _set(cfg, key, value)
    return cfg


def test_every_rule_belongs_to_a_step(tiny_corpus):
    auto = _params(**{"demo.ali": "auto"})
    user = _params(**{**_user_data(tiny_corpus), **_existing_features(tiny_corpus)})
    user["merge"]["weights"] = {}
    user["tasks"]["de"]["egs"] = _kaldi_egs(tiny_corpus)
    rules = {j.rule for cfg in (None, auto, user) for j in workflow_jobs(REPO, cfg)}
    assert rules - {"all"} == set(STEP_OF_RULE), "rules/*.smk and babelflow.steps.STEPS list different rules"


def test_an_output_outside_the_step_outs_is_an_error():
    jobs = [Job("merge", ("exp/elsewhere/merged.tsv",), ("exp/egs/en/info/num_archives",), ())]
    with pytest.raises(BabelflowError, match=r"step merge: rule output exp/elsewhere/merged.tsv is under none"):
        build_stages(jobs, "exp", ["en"])


def test_stage_cmd_asks_snakemake_for_the_step_only():
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert set(doc["stages"]) == {s.name for s in STEPS}
    for step in STEPS:
        if step.name not in doc["stages"]:
            continue
        cmd = doc["stages"][step.name]["cmd"]
        assert cmd.startswith(f"snakemake --cores all --allowed-rules {' '.join(step.rules)} -- ")
        for code in step.code:
            assert f"src/babelflow/{code}" in doc["stages"][step.name]["deps"]


# key -> a schema-valid other value (a callable gets the tiny corpus dir). Every leaf of
# params.yaml must be covered, so a new parameter cannot slip past this test.
def _user_data(corpus):
    return {
        "data.dirs": {"en": str(corpus / "en" / "data"), "de": str(corpus / "de" / "data")},
        "tasks": {"en": {"kind": "frame", "data": "en", "ali": str(corpus / "en" / "ali")},
                  "de": {"kind": "frame", "data": "de", "ali": str(corpus / "de" / "ali")}},
    }


def _user_data_one_task(corpus):
    edits = _user_data(corpus)
    del edits["tasks"]["de"]
    return edits


def _existing_features(corpus):
    d = corpus / "kaldi_feats_en"  # what make_fbank.sh + compute_cmvn_stats.sh leave (only paths are read)
    d.mkdir(exist_ok=True)
    (d / "raw.ark").touch()
    (d / "feats.scp").write_text(f"u1 {d / 'raw.ark'}:4\n")
    (d / "cmvn.scp").write_text(f"s1 {d / 'raw.ark'}:40\n")
    return {"features.existing": {"en": str(d)}}


def _kaldi_egs(corpus) -> str:
    """A get_egs.sh dir (only info/ and the archive's name are read), with the model's context."""
    from babelflow.nnet.modelconfig import ModelConfig

    d = corpus / "kaldi_egs_de"
    (d / "info").mkdir(parents=True, exist_ok=True)
    (d / "egs.1.ark").touch()
    mc = ModelConfig.from_dict({k: v for k, v in _params()["model"].items() if k != "config"})
    (d / "info" / "left_context").write_text(f"{mc.left_context}\n")
    (d / "info" / "right_context").write_text(f"{mc.right_context}\n")
    return str(d)


def _auto_alignments(corpus):
    return {"demo.ali": "auto"}


# probed against another reference than params.yaml: tasks against user data (not the demo's derived
# tasks); gmm.* with the demo's alignments made by the gmm step (by default nothing reads gmm.*)
REFERENCE = {"tasks": _user_data, "data.root": _user_data, "gmm": _auto_alignments, "decode.gmm": _auto_alignments}
PERTURB = {
    "demo.size": "large", "demo.utts_per_lang": 50, "demo.langs": {"en": "en-gb", "de": "de", "es": "es"},
    "demo.voices": ["m1", "f1"], "demo.seed": 1, "demo.ali_jobs": 1, "demo.utterance_tasks": ["lang"],
    "demo.ali": "auto", "demo.test_utts_per_lang": 10, "demo.test_voices": ["m6"], "demo.test_snr_db": [0, 10],
    "demo.low_resource": {"es": 40},
    "lowres.tasks": ["en"], "lowres.base_tasks": "all",
    "data.nj": 3, "data.dirs": _user_data, "tasks": _user_data_one_task,
    "data.root": lambda corpus: {**_user_data(corpus), "data.root": str(corpus)},
    "features.type": "mfcc", "features.config": "conf", "features.options": {"num_mel_bins": 30, "dither": 0},
    "features.cmvn_opts": "--norm-means=true --norm-vars=false", "features.existing": _existing_features,
    "egs.frames_per_eg": 16, "egs.left_context": 20, "egs.right_context": 20, "egs.num_valid_utts": 100,
    "egs.num_train_subset_utts": 100, "egs.valid_fraction": 0.2, "egs.valid_by": "speaker",
    "egs.length_tolerance": 3, "egs.dtype": "float32",
    "egs.seed": 1, "egs.utterance": {"chunking": "random", "min_chunk": 50, "max_chunk": 200, "sort_window": 64},
    "merge.weights": {"en": 0.3, "de": 1.0, "es": 1.0, "fr": 1.0, "lang": 1.0, "voice": 1.0, "gender": 1.0,
                      "rate": 1.0},
    "merge.local_conf": "local_conf", "merge.block_size": 32, "merge.sampler": "temperature", "merge.temperature": 2.0,
    "merge.num_archives": 5,
    "model.config": "model_conf",
    "model.layers": [{"dim": 192, "splice": [-4, 0, 4]}], "model.bottleneck": {"dim": 64},
    "model.frame_head": {"hidden": [128]}, "model.utterance_head.hidden": [128],
    "model.utterance_head.input": "layers", "model.utterance_head.pooling": "attentive",
    "model.utterance_head.attention_dim": 32, "model.utterance_head.stats_norm": False,
    "model.utterance_head.project": 64, "model.nonlinearity": "tanh",
    "model.norm": "renorm",
    "train.num_epochs": 5, "train.optimizer": "sgd", "train.lr_initial": 1e-3, "train.lr_final": 1e-4,
    "train.max_grad_norm": 1.0, "train.param_init": "kaldi", "train.natural_gradient": True,
    "train.max_change": 0.75, "train.max_change_output": 1.5, "train.max_param_change": 2.0, "train.blocks_per_step": 2,
    "train.batching": "mixed", "train.shared_forward": False, "train.checkpoint_every": 100, "train.loader": "host",
    "train.precision": "fp32",
    "train.nproc": 2, "train.nnodes": 2, "train.freeze_trunk": True, "train.init": "init", "train.tasks": ["en"],
    "train.seed": 1,
    "priors.method": "counts", "priors.num_egs": 100, "priors.floor": 1e-6, "priors.seed": 1,
    "gmm.use": "mono", "gmm.lang": {"sil_phone": "sil", "oov_word": "<unk>", "num_sil_states": 5},
    "gmm.mono": {"num_iters": 30, "totgauss": 500, "boost_silence": 1.25, "seed": 1},
    "gmm.tri": {"num_leaves": 100, "totgauss": 400, "num_iters": 30, "realign_iters": [10, 20],
                "boost_silence": 1.25, "seed": 1},
    "decode.tasks": ["en"], "decode.lm_order": 3, "decode.gmm": False, "decode.acoustic_scale": 0.08,
    "decode.beam": 13.0, "decode.lattice_beam": 6.0, "decode.max_active": 5000, "decode.min_lmwt": 5,
    "decode.max_lmwt": 15, "decode.word_ins_penalty": [0.0],
}
STRUCTURAL = {"workdir"}  # changes every path: dvc.yaml is regenerated (`babelflow dvc-sync`), not re-run


def _leaves(d, prefix=""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key not in PERTURB:
            yield from _leaves(v, key + ".")
        else:
            yield key


def _set(cfg, dotted, value):
    *parents, leaf = dotted.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    node[leaf] = value


def _signature(jobs):
    sig: dict[str, set] = {}
    for j in jobs:
        sig.setdefault(j.rule, set()).add((j.output, j.params))
    return sig


@pytest.fixture(scope="module")
def probe(tiny_corpus, tmp_path_factory):
    """key -> the rules whose jobs change when only that key changes."""
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    tmp = tmp_path_factory.mktemp("probe")
    (tmp / "fbank.conf").write_text("--num-mel-bins=30\n")
    model = yaml.safe_load((REPO / "workflow" / "configs" / "babel_multilang.yaml").read_text())
    model["layers"] = model["layers"][:2]  # another context: the egs step reads it too
    (tmp / "model.yaml").write_text(yaml.safe_dump(model))
    init = tmp / "init.pt"
    init.write_bytes(b"")  # only its path is read at DAG time
    (tmp / "local.conf").write_text('lang_list=(en de es fr)\nlang2weight="0.5,1,1,1"\n')
    files = {"conf": tmp / "fbank.conf", "init": init, "model_conf": tmp / "model.yaml",
             "local_conf": tmp / "local.conf"}
    refs: dict = {}

    def under(reference, key, value) -> set[str]:
        """The rules that change when ``key`` changes, starting from params.yaml + ``reference``'s edits."""
        cfg = copy.deepcopy(base)
        if reference:
            for k, v in reference(tiny_corpus).items():
                _set(cfg, k, v)
            cfg["merge"]["weights"] = {}
        if reference not in refs:
            refs[reference] = _signature(workflow_jobs(REPO, copy.deepcopy(cfg)))
        ref = refs[reference]
        if callable(value):
            for k, v in value(tiny_corpus).items():
                _set(cfg, k, v)
            cfg["merge"]["weights"] = {}
        else:
            _set(cfg, key, str(files[value]) if isinstance(value, str) and value in files else value)
            if key in ("demo.utterance_tasks", "demo.langs", "merge.local_conf"):
                cfg["merge"]["weights"] = {}
            if key == "train.freeze_trunk":
                cfg["train"]["init"] = str(init)
        sig = _signature(workflow_jobs(REPO, cfg))
        return {r for r in set(ref) | set(sig) if ref.get(r) != sig.get(r)} - {"all"}

    changed = {}
    for key, value in PERTURB.items():
        primary = REFERENCE.get(key) or REFERENCE.get(key.split(".")[0])
        changed[key] = under(primary, key, value)
        if key not in ("tasks", "data.dirs", "data.root"):  # every other key also with the demo's own GMM alignments
            changed[key] |= under(_auto_alignments if primary is None else None, key, value)
    return changed


def test_perturbations_cover_every_parameter():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    missing = [k for k in _leaves(params) if k not in PERTURB and k not in STRUCTURAL
               and not any(k.startswith(p + ".") for p in PERTURB)]
    assert not missing, f"params.yaml keys with no probe value in PERTURB: {missing}"


def test_each_rule_reads_only_keys_its_stage_declares(probe):
    errors = []
    for key, rules in probe.items():
        for rule in rules:
            step = STEP_OF_RULE[rule]
            if not any(key == p or key.startswith(p + ".") for p in step.params):
                errors.append(f"rule {rule} (stage {step.name}) changes with {key}, not in its params")
    assert not errors, "\n".join(errors)


def test_each_declared_key_is_read_by_its_stage(probe):
    errors = []
    for step in STEPS:
        for p in step.params:
            hit = {r for key, rules in probe.items() if key == p or key.startswith(p + ".") for r in rules}
            if not hit & set(step.rules):
                errors.append(f"stage {step.name} declares {p}, but none of its rules changes with it")
    assert not errors, "\n".join(errors)


def test_probe_sees_the_obvious(probe):
    """Sanity of the probe itself: a weight moves merge, a feature option moves the features jobs."""
    assert probe["merge.weights"] == {"merge"}
    assert {"features_job", "features"} <= probe["features.options"]
    assert "merge" not in probe["features.options"]
