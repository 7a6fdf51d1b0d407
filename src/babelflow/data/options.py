"""Options of the data step (``params.yaml`` ``data:``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import StepOptions, option


@dataclass
class DataOptions(StepOptions):
    """``params.yaml`` ``data:`` -> ``babelflow data`` (validate_data_dir.sh + split_data.sh)."""

    SECTION = "data"
    nj: int = option(2, help="jobs per data set (split_data.sh)")
    dirs: dict[str, str] = option(default_factory=dict, cli=False,
                                  help="data set name -> Kaldi data dir; empty: the demo corpus")
    root: str | None = option(None, help="the folder that relative paths in params.yaml and wav.scp (files and "
                                         "pipes) are relative to, as Kaldi's experiment folder; null: where the "
                                         "workflow runs")
