"""Shared fixtures: the real-Kaldi fixture folder and small generated corpora."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KALDI_FIXTURES = REPO.parent / "shared" / "kaldi-fixtures"


@pytest.fixture(scope="session")
def kaldi_fixtures() -> Path:
    if not KALDI_FIXTURES.is_dir():
        pytest.skip(f"real Kaldi fixtures not present at {KALDI_FIXTURES}")
    return KALDI_FIXTURES


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """Two languages x 16 utterances of the espeak demo corpus (generated once per session)."""
    from babelflow.demo.corpus import DemoConfig, generate_corpus

    root = tmp_path_factory.mktemp("corpus")
    cfg = DemoConfig(langs={"en": "en-us", "de": "de"}, utts_per_lang=16, seed=3)
    generate_corpus(root, cfg, jobs=2)
    return root


def project_copy(dest: Path, **params_edits) -> Path:
    """A copy of the workflow (Snakefile, rules, workflow/, params.yaml) to run in isolation."""
    import yaml

    for item in ("Snakefile", "rules", "workflow", "params.yaml"):
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, dest / item, symlinks=False)
        else:
            shutil.copy(src, dest / item)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for dotted, value in params_edits.items():
        node = params
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


def dvc_project(dest: Path, **params_edits) -> Path:
    """A git + DVC repo made of a copy of the project (its .dvc/config, .dvcignore, .gitignore and
    src/, so code deps resolve inside the repo), with dvc.yaml regenerated for the edited params."""
    project_copy(dest, **params_edits)
    shutil.copytree(REPO / "src" / "babelflow", dest / "src" / "babelflow",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (dest / ".dvc").mkdir()
    for item in (".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / item, dest / item)
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "config", "user.name", "babelflow-tests"], dest)
    run(["git", "config", "user.email", "tests@example.com"], dest)
    run(["babelflow", "dvc-sync"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "project"], dest)
    return dest


def tool_env() -> dict[str, str]:
    """The environment for snakemake/dvc/babelflow subprocesses: the venv first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a command with the venv's bin first on PATH (rules call `babelflow`)."""
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def planned_jobs(proj: Path) -> dict[str, int]:
    """Rule -> job count that `snakemake -n` would run (its 'Job stats' table)."""
    out = run(["snakemake", "-n", "--cores", "2"], proj)
    text = out.stdout + out.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1].splitlines()
    jobs = {}
    for line in table[3:]:
        fields = line.split()
        if len(fields) != 2 or fields[0] == "total":
            break
        jobs[fields[0]] = int(fields[1])
    return jobs


@pytest.fixture(scope="session")
def tiny_features(tiny_corpus, tmp_path_factory) -> Path:
    """The tiny corpus through the data and features steps (nj=2): WORK/{data,feats}/<lang>."""
    from babelflow.data.split import prepare_data_dir
    from babelflow.features import FeatureConfig
    from babelflow.make_feats import feats_job, finalize_feats_dir

    work = tmp_path_factory.mktemp("work")
    cfg = FeatureConfig.build("fbank", None, {"num_mel_bins": 40, "dither": 0})
    for lang in ("en", "de"):
        prepare_data_dir(tiny_corpus / lang / "data", work / "data" / lang, 2)
        for job in (1, 2):
            feats_job(cfg, work / "data" / lang / "split2" / str(job), work / "feats" / lang, job, progress=False)
        finalize_feats_dir(cfg, work / "data" / lang, work / "feats" / lang, 2, "--norm-means=false --norm-vars=false")
    return work
