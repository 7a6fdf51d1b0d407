"""Training options (kept apart from the training code so the CLI can list them without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainOptions:
    num_epochs: int = 4
    optimizer: str = "adamw"  # adamw | sgd
    lr_initial: float = 2e-3
    lr_final: float = 2e-4  # exponential decay over data processed, as Kaldi's effective lrate
    momentum: float = 0.9  # sgd
    weight_decay: float = 0.0
    max_grad_norm: float = 2.0  # stands for Kaldi's max-param-change
    blocks_per_step: int = 1
    batching: str = "schedule"  # schedule | mixed
    checkpoint_every: int = 200  # steps
    shuffle_window: int = 20  # blocks
    freeze_trunk: bool = False
    init: str | None = None  # a model/checkpoint whose trunk (and matching heads) to start from
    tasks: list[str] = field(default_factory=list)  # train only these tasks' heads (default: all)
    seed: int = 0
    threads: int = 0  # torch intra-op threads (0: torch's default)
