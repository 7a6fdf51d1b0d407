"""The chain on a real one-node SLURM (tests/slurm/cluster.sh) through workflow/profiles/slurm.

Checks that jobs really went through SLURM (Snakemake's job ids are in sacct), that the
models equal a local run's, that a scancel'ed egs job is retried and a scancel'ed training
job resumes from its checkpoint. Skipped only where the machine cannot run the daemons.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
import torch
import yaml

from .conftest import REPO, project_copy, run, tool_env

pytestmark = pytest.mark.slow

CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
# one language + gender: 1 frame and 1 utterance task; 2 training processes (gloo); enough
# steps with frequent checkpoints that a scancel lands mid-training
SLURM_TINY = dict(
    demo__utts_per_lang=16, demo__langs={"en": "en-us"}, demo__utterance_tasks=["gender"], demo__low_resource={},
    demo__test_utts_per_lang=8,
    decode__gmm=False,
    model__layers=[{"dim": 32, "splice": [-2, 0, 2]}, {"dim": 32, "splice": [-3, 3]}],
    model__bottleneck={"dim": 16}, model__frame_head={"hidden": [32]}, model__utterance_head={"hidden": [32]},
    merge__block_size=8, merge__weights={"en": 1.0, "gender": 1.0},
    train__num_epochs=3, train__nproc=2, train__checkpoint_every=2,
)
# the profile as shipped, polling sooner than a real cluster needs
FAST = ["--slurm-init-seconds-before-status-checks", "2", "--jobs", "4"]


def fit_profile_to_node(proj) -> None:
    """Cap the shipped profile's cpus_per_task and threads at the test node's CPUs.

    SLURM leaves a job that asks for more CPUs than any node has PENDING (PartitionConfig)
    for ever, and the plugin waits on it: on a 2-CPU node the 4-CPU decode jobs would hang.
    """
    cpus = int(subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True,
                              check=True).stdout.split()[0].rstrip("+"))
    path = proj / "workflow" / "profiles" / "slurm" / "config.yaml"
    prof = yaml.safe_load(path.read_text())
    for res in prof["set-resources"].values():
        res["cpus_per_task"] = min(res.get("cpus_per_task", 1), cpus)
    prof["set-threads"] = {rule: min(n, cpus) for rule, n in prof["set-threads"].items()}
    path.write_text(yaml.safe_dump(prof, sort_keys=False))


def _sacct(job_ids: list[str]) -> dict[str, str]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split("|")[:2] for line in out.splitlines() if line)


def _state_dicts(proj):
    out = {}
    for task in ("en", "gender"):
        blob = torch.load(proj / "exp" / "models" / task / "model.pt", weights_only=True)
        out[task] = blob["state_dict"]
    return out


@pytest.fixture(scope="module")
def cluster():
    proc = subprocess.run([str(CLUSTER), "start"], capture_output=True, text=True, timeout=900)
    if proc.returncode == 77:
        pytest.skip(f"this machine cannot run the SLURM daemons: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield
    subprocess.run([str(CLUSTER), "stop"], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    proj = project_copy(tmp_path_factory.mktemp("local"), **SLURM_TINY)
    run(["snakemake", "--profile", "workflow/profiles/local"], proj)
    return proj


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    proj = project_copy(tmp_path_factory.mktemp("slurm"), **SLURM_TINY)
    fit_profile_to_node(proj)
    t = time.time()
    proc = run(["snakemake", "--profile", "workflow/profiles/slurm", *FAST], proj, timeout=1500)
    return proj, proc.stdout + proc.stderr, time.time() - t


def test_jobs_went_through_slurm(slurm_run):
    proj, log, _ = slurm_run
    ids = re.findall(r"SLURM jobid (\d+)", log)
    assert len(ids) >= 10, log[-3000:]
    states = _sacct(ids)
    assert set(states) == set(ids) and set(states.values()) == {"COMPLETED"}, states
    assert (proj / "exp" / "kaldi" / "en" / "final.mdl").is_file()
    assert "torch.distributed.run" in (proj / "logs" / "train.log").read_text()  # 2 processes


def test_models_equal_a_local_run(slurm_run, local_run):
    proj, _, _ = slurm_run
    a, b = _state_dicts(local_run), _state_dicts(proj)
    for task in a:
        assert a[task].keys() == b[task].keys()
        for k in a[task]:
            torch.testing.assert_close(a[task][k], b[task][k], rtol=0, atol=1e-6, msg=f"{task}: {k}")


def _wait_running(rule: str, deadline: float, after=None) -> str:
    """The SLURM id of a RUNNING job of ``rule`` (the plugin puts ``rule_<name>`` in the comment)."""
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h", "-o", "%i|%k|%T"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            jid, comment, state = line.split("|")
            if comment.startswith(f"rule_{rule}") and state == "RUNNING" and (after is None or after()):
                return jid
        time.sleep(0.1)
    raise AssertionError(f"no running {rule} job seen")


def test_scancel_is_retried_and_training_resumes(slurm_run):
    proj, _, _ = slurm_run
    params = proj / "params.yaml"
    p = yaml.safe_load(params.read_text())
    p["egs"]["seed"] = 1  # new egs: everything from egs on reruns, training from scratch
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    ckpt = proj / "exp" / "train" / "checkpoint.pt"
    env_cmd = ["snakemake", "--profile", "workflow/profiles/slurm", *FAST]
    started = time.time()
    proc = subprocess.Popen(env_cmd, cwd=proj, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=tool_env())
    try:
        deadline = time.time() + 900
        egs_job = _wait_running("egs_job", deadline)
        subprocess.run(["scancel", egs_job], check=True)
        train_job = _wait_running("train", deadline,
                                  after=lambda: ckpt.exists() and ckpt.stat().st_mtime > started)
        subprocess.run(["scancel", train_job], check=True)
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    states = _sacct([egs_job, train_job])
    assert states[egs_job].startswith("CANCELLED") and states[train_job].startswith("CANCELLED"), states
    assert "resuming from" in (proj / "logs" / "train.log").read_text(), "the retried training started over"
    assert (proj / "exp" / "kaldi" / "en" / "final.mdl").is_file()

