"""The workflow's job graph, read through Snakemake's own API (no jobs run).

`babelflow dvc-sync` derives DVC stages from it and the tests compare what each rule
reads against the stages' ``params``; building the DAG in-process takes ~0.1 s once
Snakemake is imported, so probing many configs is cheap.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Job:
    rule: str
    output: tuple[str, ...]
    input: tuple[str, ...]
    params: tuple[tuple[str, str], ...]  # rendered, as the shell command sees them


def workflow_jobs(project: str | Path = ".", config: dict[str, Any] | None = None,
                  snakefile: str | Path | None = None) -> list[Job]:
    """Every job of the full workflow (as with ``--forceall -n``); ``config``, when given,
    replaces ``params.yaml`` as a whole; ``snakefile``: babelflow's, when the project is an experiment
    folder without one (``snakemake -s``)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

    project = Path(project).resolve()
    sink = io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.chdir(project))
        stack.enter_context(contextlib.redirect_stderr(sink))
        stack.enter_context(contextlib.redirect_stdout(sink))
        stack.enter_context(_quiet_logging())
        api = stack.enter_context(SnakemakeApi(OutputSettings()))
        wapi = api.workflow(resource_settings=ResourceSettings(cores=1),
                            config_settings=ConfigSettings(config=config or {}, replace_workflow_config=bool(config)),
                            snakefile=Path(snakefile).resolve() if snakefile else project / "Snakefile",
                            workdir=project)
        dapi = wapi.dag(dag_settings=DAGSettings(forceall=True))
        wf = wapi._workflow  # the public API only prints DAGs; the jobs are what we need
        wf.dag_settings = dapi.dag_settings
        wf._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True)
        wf._build_dag()
        return [Job(j.rule.name, tuple(map(str, j.output)), _inputs(j.input),
                    tuple((k, str(v)) for k, v in j.params.items()))
                for j in wf.dag.jobs]


def _inputs(inputs) -> tuple[str, ...]:
    """A job's inputs, its ``audio`` ones (one per recording) as the directories holding them: what DVC
    hashes (babelflow.data.sources)."""
    from .data.sources import audio_roots

    names = getattr(inputs, "_names", {})
    if "audio" not in names:
        return tuple(map(str, inputs))
    audio = set(map(str, inputs.audio))
    return tuple(x for x in map(str, inputs) if x not in audio) + tuple(audio_roots(sorted(audio)))


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """Snakemake logs "Building DAG of jobs..." through the root logger, i.e. into ours."""
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def touch_outputs(project: str | Path = ".", cores: int = 1) -> int:
    """After ``dvc pull`` / ``dvc checkout``: mark every output as up to date for Snakemake
    (``snakemake --touch --forceall``), so its mtime trigger does not rebuild what DVC restored
    in arbitrary order, and its metadata records the current params for the params trigger.
    Refuses, naming them, when outputs are missing: touching would fake them."""
    import subprocess
    import sys

    from .errors import BabelflowError

    project = Path(project)
    jobs = [j for j in workflow_jobs(project) if j.output]
    missing = sorted({o for j in jobs for o in j.output if not (project / o).exists()})
    if missing:
        shown = "\n  ".join(missing[:20]) + (f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise BabelflowError(f"{len(missing)} workflow output(s) missing, run `dvc pull` (or `dvc checkout`) "
                             f"first, or let Snakemake build them:\n  {shown}")
    snakemake = Path(sys.executable).with_name("snakemake")
    cmd = [str(snakemake) if snakemake.exists() else "snakemake",
           "--touch", "--forceall", "--cores", str(cores), "--quiet"]
    proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BabelflowError(f"{' '.join(cmd)} failed in {project}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return len(jobs)


def mark_checkout_fresh(project: str | Path = ".") -> int:
    """After ``git clone`` + ``dvc pull``, make Snakemake see what DVC restored as up to date.

    DVC writes outputs in no particular order, so Snakemake's mtime trigger would find a model older
    than its egs and plan the chain again. When the project has never run Snakemake (no ``.snakemake/``:
    a fresh clone), has a ``dvc.lock`` and ``dvc status`` finds every stage current, the outputs are
    exactly what the lock records for the present inputs: each stage's outputs then get one mtime, later
    stages later ones (dvc.lock's dependency order), all after the checkout. Anything short of a clean
    status leaves the files alone (Snakemake then decides as usual). Inside ``dvc repro`` (``DVC_STAGE``)
    nothing is done: DVC holds its lock and the stage runs anyway. Returns the number of stages marked."""
    import json
    import os
    import subprocess
    import time

    import yaml

    project = Path(project)
    lock = project / "dvc.lock"
    if (project / ".snakemake").exists() or not lock.is_file() or os.environ.get("DVC_STAGE"):
        return 0
    try:
        proc = subprocess.run(["dvc", "status", "--json"], cwd=project, capture_output=True, text=True,
                              timeout=120)
        stages = yaml.safe_load(lock.read_text()).get("stages", {})
        clean = proc.returncode == 0 and json.loads(proc.stdout or "{}") == {}
    except (OSError, subprocess.SubprocessError, ValueError, yaml.YAMLError):
        return 0
    if not clean:
        return 0
    order = _stage_order({name: ([d["path"] for d in s.get("deps", [])], [o["path"] for o in s.get("outs", [])])
                          for name, s in stages.items()})
    start = time.time()
    for i, name in enumerate(order):
        t = start + i
        for out in (o["path"] for o in stages[name].get("outs", [])):
            for path in _walk(project / out):
                os.utime(path, (t, t), follow_symlinks=False)
    return len(order)


def _stage_order(stages: dict[str, tuple[list[str], list[str]]]) -> list[str]:
    """Stages so that each comes after the stages whose outputs it depends on (a dep inside an output,
    or a directory dep holding one)."""
    def overlap(a: str, b: str) -> bool:
        a, b = a.rstrip("/") + "/", b.rstrip("/") + "/"
        return a.startswith(b) or b.startswith(a)

    after = {name: {other for other, (_, outs) in stages.items() if other != name
                    and any(overlap(d, o) for d in deps for o in outs)} for name, (deps, _) in stages.items()}
    order: list[str] = []
    while after:
        ready = sorted(n for n, needs in after.items() if not needs - set(order))
        if not ready:  # a cycle cannot come from dvc.lock; keep the rest in file order
            ready = list(after)
        order += ready
        for n in ready:
            del after[n]
    return order


def _walk(path: Path) -> Iterator[Path]:
    """A file, or a directory and everything under it (directories after their contents)."""
    import os

    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path, topdown=False):
            for f in files:
                yield Path(root) / f
            for d in dirs:
                yield Path(root) / d
        yield path
    elif path.exists() or path.is_symlink():
        yield path
