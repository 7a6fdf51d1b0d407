"""WER per task and system, collected from decode dirs: DVC metrics (JSON), a table DVC plots, a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import BabelflowError
from ..io import write_text


def system_name(key: str) -> str:
    """The table's system for a metrics key: ``wer`` is the network's (``nnet``), ``<s>_wer`` is ``<s>``."""
    return "nnet" if key == "wer" else key.removesuffix("_wer")


def collect_wer(results: list[str]) -> dict[str, dict[str, float]]:
    """``TASK.KEY=DECODE_DIR`` items -> {task: {key: the decode dir's best WER}}."""
    out: dict[str, dict[str, float]] = {}
    for item in results:
        key, sep, path = item.partition("=")
        task, dot, name = key.rpartition(".")
        if not (sep and dot and task and name):
            raise BabelflowError(f"decode-metrics: expected TASK.KEY=DECODE_DIR, got '{item}'")
        f = Path(path) / "metrics.json"
        try:
            out.setdefault(task, {})[name] = float(json.loads(f.read_text())["wer"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BabelflowError(f"{f}: no WER to collect ({type(e).__name__}: {e})") from None
    return out


def write_wer(out_json: str | Path, wer: dict[str, dict[str, float]], plot: str | Path | None = None) -> None:
    """``out_json`` ({task: {key: wer}}), the same as ``.tsv`` (columns ``system``, ``task``, ``wer``) and,
    with ``plot``, bars of WER per task, one per system."""
    rows = [(system_name(k), task, w) for task, ws in wer.items() for k, w in ws.items()]
    write_text(out_json, json.dumps(wer, indent=2, sort_keys=True) + "\n")
    write_text(Path(out_json).with_suffix(".tsv"),
               "".join(f"{s}\t{t}\t{w}\n" for s, t, w in [("system", "task", "wer"), *rows]))
    if plot:
        _plot(Path(plot), rows)


def _plot(out_png: Path, rows: list[tuple[str, str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(dict.fromkeys(s for s, _, _ in rows))
    tasks = list(dict.fromkeys(t for _, t, _ in rows))
    value = {(s, t): w for s, t, w in rows}
    width = 0.8 / len(systems)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(tasks) * max(1, len(systems) / 2), 3.2))
    for k, s in enumerate(systems):
        xs = [i + (k - (len(systems) - 1) / 2) * width for i, t in enumerate(tasks) if (s, t) in value]
        ys = [value[s, t] for t in tasks if (s, t) in value]
        bars = ax.bar(xs, ys, width, label=s)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("WER (%)")
    ax.legend(fontsize=7, ncols=min(4, len(systems)))
    fig.tight_layout()
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(out_png)
