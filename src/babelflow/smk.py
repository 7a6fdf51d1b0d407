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


def workflow_jobs(project: str | Path = ".", config: dict[str, Any] | None = None) -> list[Job]:
    """Every job of the full workflow (as with ``--forceall -n``); ``config``, when given,
    replaces ``params.yaml`` as a whole."""
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
                            snakefile=project / "Snakefile", workdir=project)
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
