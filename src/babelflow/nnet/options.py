"""Options of the training and priors steps (apart from the code, so that the Snakefile and the
CLI can list them without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..options import StepOptions, option

if TYPE_CHECKING:
    from ..config import Pipeline


@dataclass
class TrainOptions(StepOptions):
    """``params.yaml`` ``train:`` -> ``babelflow train`` (Kaldi's train_raw_dnn.py)."""

    SECTION = "train"
    num_epochs: int = 4
    optimizer: str = option("adamw", choices=("adamw", "sgd"))
    lr_initial: float = 2e-3
    lr_final: float = option(2e-4, help="exponential decay over the data processed, as Kaldi's effective lrate")
    momentum: float = option(0.9, help="sgd")
    weight_decay: float = 0.0
    max_grad_norm: float = option(2.0, help="gradient-norm clipping (0: off)")
    max_change: float = option(0.0, help="per-layer max-change: caps each hidden affine's update norm "
                                         "(Kaldi: 0.75; 0: off)")
    max_change_output: float = option(0.0, help="max-change of the output layers (Kaldi: 1.5; 0: off)")
    max_param_change: float = option(0.0, help="caps the whole update's norm (Kaldi's max-param-change 2.0; 0: off)")
    natural_gradient: bool = option(False, help="Kaldi's NaturalGradientAffineComponent update (alpha 4, "
                                                "2000 samples history; full-rank covariances)")
    param_init: str = option("torch", choices=("torch", "kaldi"),
                             help="torch: nn.Linear's default; kaldi: xconfig's N(0, 1/in_dim) weights, "
                                  "N(0, bias_stddev^2) biases")
    bias_stddev: float = option(1.0, help="param_init kaldi: the biases' standard deviation (Kaldi: 1.0)")
    blocks_per_step: int = 1
    batching: str = option("schedule", choices=("schedule", "mixed"),
                           help="schedule: one task per minibatch; mixed: every task in each step")
    shared_forward: bool = option(True, help="blocks of utterance tasks over the same examples (tasks over one "
                                               "feature store) train as one minibatch: one trunk pass, an output "
                                               "per task, their objectives summed (a multi-output Kaldi eg)")
    checkpoint_every: int = option(200, help="steps")
    shuffle_window: int = option(20, help="blocks")
    freeze_trunk: bool = False
    init: str | None = option(None, help="a model/checkpoint whose trunk (and matching heads) to start from")
    tasks: list[str] = option(default_factory=list, help="train only these tasks' heads (default: all)")
    seed: int = 0
    threads: int = option(0, help="torch intra-op threads (0: torch's default)")
    loader: str = option("auto", choices=("auto", "resident", "host"),
                         help="resident: every archive on the device, blocks gathered there; host: read from the "
                              "memory maps (prefetched on a GPU); auto: resident on a GPU with room, else host. "
                              "The batches are the same")
    precision: str = option("auto", choices=("auto", "bf16", "fp32"),
                            help="training steps' arithmetic: bf16 autocast (float32 weights and updates) or "
                                 "fp32; auto: bf16 where the device computes it natively (GPU, AVX512-BF16/AMX "
                                 "CPU), else fp32. Diagnostics and inference always run in fp32")


@dataclass
class LaunchOptions(StepOptions):
    """``params.yaml`` ``train:`` keys of the launcher (``babelflow torchrun``), not of training itself:
    the number of processes changes where the work runs, not the result."""

    SECTION = "train"
    nproc: int = option(1, help="processes per node (torchrun --nproc_per_node; GPUs per node)", cli=False)
    nnodes: int = option(1, help="nodes of the SLURM training job (one torchrun each)", cli=False)


@dataclass
class PriorsOptions(StepOptions):
    """``params.yaml`` ``priors:`` -> ``babelflow priors`` (Kaldi's adjust_priors.sh)."""

    SECTION = "priors"
    method: str = option("posterior", choices=("posterior", "counts"),
                         help="posterior: average network output on the task's egs; counts: label counts")
    num_egs: int = option(20000, help="egs sampled for the average")
    floor: float = 1e-8
    seed: int = 0


def resolve(p: Pipeline, check_paths: bool) -> None:
    """The training section against the tasks; the model itself is checked with the shared config."""
    t = p.options(TrainOptions)
    unknown = [x for x in t.tasks if x not in p.tasks]
    if unknown:
        raise p.error("train.tasks", f"unknown task(s) {', '.join(unknown)}")
    if t.freeze_trunk and not t.init:
        raise p.error("train.freeze_trunk", "needs train.init (the model whose trunk to keep)")
    if t.lr_final > t.lr_initial:
        raise p.error("train.lr_final", "larger than train.lr_initial")


def priors_args(p: Pipeline, task: str) -> list[str]:
    """``babelflow split`` computes priors for frame tasks (adjust_priors.sh); utterance tasks have none."""
    return p.options(PriorsOptions).to_args() if p.tasks[task].kind == "frame" else []
