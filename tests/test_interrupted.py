"""Interrupted anywhere, nothing lost: the golden chain with its jobs SIGKILLed at random points
(several times, any step), rerun until done, gives the golden chain's results."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time

import pytest

from .conftest import project_copy, tool_env
from .test_golden_chain import GOLDEN, MODEL_FILES, _float_stats, _sha
from .test_pipeline import TINY

pytestmark = pytest.mark.slow
KILLS = 10


def _job_pids(root: int) -> list[int]:
    """Processes under ``root`` running babelflow (the jobs; not Snakemake itself)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            todo.append(c)
            try:
                cmd = open(f"/proc/{c}/cmdline", "rb").read().replace(b"\0", b" ")
            except OSError:
                continue
            if b"babelflow" in cmd and b"snakemake" not in cmd:
                out.append(c)
    return out


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    proj = project_copy(tmp_path_factory.mktemp("killed"), **{**TINY, "demo__voices": ["m1", "m2", "f1", "f4"],
                                                             "demo__low_resource": {}, "decode__gmm": False})
    rng = random.Random(0)
    kills: list[str] = []
    for _ in range(KILLS + 20):
        proc = subprocess.Popen(["snakemake", "--cores", "2", "--rerun-incomplete"], cwd=proj, env=tool_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stop = threading.Event()

        def killer(proc=proc, stop=stop):
            while len(kills) < KILLS and not stop.wait(rng.uniform(0.3, 6.0)):
                pids = _job_pids(proc.pid)
                if pids:
                    pid = rng.choice(pids)
                    try:
                        cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
                        os.kill(pid, signal.SIGKILL)
                        kills.append(" ".join(c.decode() for c in cmd[1:4]))
                        return
                    except OSError:
                        pass

        t = threading.Thread(target=killer, daemon=True)
        t.start()
        rc = proc.wait(timeout=1500)
        stop.set()
        t.join()
        if rc == 0:
            break
        time.sleep(0.5)
    assert rc == 0, f"not finished after {len(kills)} kills"
    return proj, kills


def test_jobs_were_killed_and_the_chain_still_gives_the_golden_results(killed):
    import json

    proj, kills = killed
    assert len(kills) >= 5, kills  # the chain ran long enough to be hit several times
    floats = GOLDEN["float_stats"]
    data = {k: v for k, v in GOLDEN["sha256"].items() if not k.endswith(MODEL_FILES) and k not in floats}
    assert [k for k, v in data.items() if not (proj / k).is_file() or _sha(proj / k) != v] == [], kills
    for rel, want in floats.items():
        got = _float_stats(proj, rel)
        assert got["n"] == want["n"] and got["sum"] == pytest.approx(want["sum"], rel=1e-5, abs=1e-3), rel
    for name, golden in (("train", GOLDEN["train_metrics"]), ("models", GOLDEN["model_metrics"])):
        got = json.loads((proj / "exp" / name / "metrics.json").read_text())
        for task, values in golden.items():
            for key, want in values.items():
                tol = 0.0 if "baseline" in key or "frames" in key or "utterances" in key else 0.02
                assert got[task][key] == pytest.approx(want, abs=tol), (name, task, key, kills)
    assert not list(proj.rglob(".*.tmp")) and not list(proj.rglob("*.tmp")), "temporary files left behind"
