# Shared helpers for the rule files.

import os


wildcard_constraints:
    name="[A-Za-z0-9][A-Za-z0-9_.+-]*",
    job="[0-9]+",
    archive="[0-9]+",


def data_source(wildcards):
    """The Kaldi data dir behind a data set (the demo rule makes the demo's)."""
    return DATASETS[wildcards.name]

