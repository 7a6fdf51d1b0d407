"""``babelflow torchrun``: start a babelflow command on every process of a training job.

Where it runs decides how (the train rule calls it the same way everywhere):

- outside SLURM: ``torchrun --standalone --nproc_per_node N`` (or the command itself when N is 1);
- in a SLURM batch step (the executor plugin runs the rule's shell there when the rule has the
  ``mpi`` resource): ``srun --ntasks-per-node=1`` re-enters this command once per node;
- in a SLURM step (one per node): ``torchrun --nnodes $SLURM_NNODES --node_rank $SLURM_NODEID
  --rdzv_backend c10d --rdzv_endpoint <first node>:<port>`` with N processes per node, or
  ``--standalone`` on a single node.

Kaldi's ``train_raw_dnn.py`` does the same with ``queue.pl --gpu 1`` per job; here the
processes of one job share gradients through torch.distributed instead of averaging models.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

from ..errors import BabelflowError

PORT_BASE = 29500


def _slurm_job(job_id: str) -> dict[str, str]:
    """``scontrol show job``'s fields (the executor plugin strips SLURM_* from the job's shell)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"(\S+?)=(\S*)", out))


def _first_node(nodelist: str) -> str:
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


def launch_command(nproc: int, argv: list[str], env: dict[str, str] | None = None) -> list[str]:
    """The command line to exec for this process's place (see the module doc)."""
    env = dict(os.environ if env is None else env)
    module = [sys.executable, "-m", "babelflow.cli"]
    job, step = env.get("SLURM_JOB_ID"), env.get("SLURM_STEP_ID")
    if job and step is None:  # the batch step: one task per node, each re-entering here
        info = _slurm_job(job)
        cmd = ["srun", "--ntasks-per-node=1", f"--nodes={info.get('NumNodes', '1')}", "--kill-on-bad-exit=1"]
        if info.get("CPUs/Task", "").isdigit():
            cmd.append(f"--cpus-per-task={info['CPUs/Task']}")
        return cmd + module + ["torchrun", f"--nproc-per-node={nproc}", "--", *argv]
    nnodes = int(env.get("SLURM_NNODES", "1")) if step is not None else 1
    if nproc == 1 and nnodes == 1:
        return module + argv
    run = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if nnodes == 1:
        return run + ["--standalone", "-m", "babelflow.cli", *argv]
    master = _first_node(env["SLURM_JOB_NODELIST"])
    port = PORT_BASE + int(job or 0) % 1000  # two jobs sharing a node do not collide
    return run + [f"--nnodes={nnodes}", f"--node_rank={env['SLURM_NODEID']}", "--rdzv_backend=c10d",
                  f"--rdzv_endpoint={master}:{port}", f"--rdzv_id={job}", "-m", "babelflow.cli", *argv]


def torchrun(nproc: int, argv: list[str]) -> int:
    if nproc < 1:
        raise BabelflowError(f"torchrun: --nproc-per-node must be >= 1, got {nproc}")
    if not argv:
        raise BabelflowError("torchrun: no babelflow command given (e.g. `babelflow torchrun -- train ...`)")
    cmd = launch_command(nproc, argv)
    print(f"babelflow torchrun: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    return subprocess.call(cmd)
