"""`babelflow torchrun`: what it starts where (outside SLURM, in a SLURM batch step, per node).

The multi-node case cannot run on one machine; its command lines are checked against a
stand-in `scontrol` that answers as a 2-node allocation would.
"""

from __future__ import annotations

import os
import sys

import pytest

from babelflow.errors import BabelflowError
from babelflow.nnet.launch import launch_command, torchrun

PY = sys.executable


@pytest.fixture
def fake_scontrol(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text("#!/bin/sh\n"
                      'if [ "$2" = hostnames ]; then printf "gpu017\\ngpu018\\n"; exit 0; fi\n'
                      'echo "JobId=$4 JobName=x NumNodes=2 NumCPUs=32 NumTasks=2 CPUs/Task=16 Partition=gpu"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_outside_slurm():
    assert launch_command(1, ["train", "a", "b"], {}) == [PY, "-m", "babelflow.cli", "train", "a", "b"]
    assert launch_command(2, ["train", "a"], {}) == [PY, "-m", "torch.distributed.run", "--nproc_per_node=2",
                                                      "--standalone", "-m", "babelflow.cli", "train", "a"]


def test_batch_step_reenters_once_per_node_through_srun(fake_scontrol):
    cmd = launch_command(4, ["train", "a"], {"SLURM_JOB_ID": "77"})
    assert cmd == ["srun", "--ntasks-per-node=1", "--nodes=2", "--kill-on-bad-exit=1", "--cpus-per-task=16",
                   PY, "-m", "babelflow.cli", "torchrun", "--nproc-per-node=4", "--", "train", "a"]


def test_each_node_runs_torchrun_with_a_c10d_rendezvous_on_the_first_node(fake_scontrol):
    env = {"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0", "SLURM_NNODES": "2", "SLURM_NODEID": "1",
           "SLURM_JOB_NODELIST": "gpu[017-018]"}
    cmd = launch_command(4, ["train", "a"], env)
    assert cmd == [PY, "-m", "torch.distributed.run", "--nproc_per_node=4", "--nnodes=2", "--node_rank=1",
                   "--rdzv_backend=c10d", "--rdzv_endpoint=gpu017:29577", "--rdzv_id=77",
                   "-m", "babelflow.cli", "train", "a"]


def test_a_one_node_step_is_standalone():
    env = {"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0", "SLURM_NNODES": "1"}
    assert "--standalone" in launch_command(2, ["train"], env)


def test_bad_use_is_an_error():
    with pytest.raises(BabelflowError, match="nproc-per-node must be >= 1"):
        torchrun(0, ["train"])
    with pytest.raises(BabelflowError, match="no babelflow command given"):
        torchrun(2, [])
