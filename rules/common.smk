# Shared helpers for the rule files. Each step's flags come from its options dataclass
# (babelflow.options): the rules pass them as lists, quoted by Snakemake's {x:q}.

from babelflow.steps import code_files


wildcard_constraints:
    name="[A-Za-z0-9][A-Za-z0-9_.+-]*",
    job="[0-9]+",
    archive="[0-9]+",


def step_code(step):
    """The step's modules, as inputs: Snakemake does not see code called from shell:."""
    return code_files(step, workflow.basedir)


def options(cls, **kw):
    """A step's flags as params.yaml sets them (``cls.to_args``)."""
    return PIPELINE.options(cls).to_args(**kw)


def local_cores():
    """Every core of a local run; on a cluster (no --cores) the profile's set-threads decides."""
    return workflow._cores or 1
