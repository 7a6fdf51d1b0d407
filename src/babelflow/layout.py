"""Where every step writes: the one spelling of each artifact path.

Rules and Python code both ask this module, so a directory moves in one place. Each
method takes the variable part (a data set, a task) and returns the path; called with a
Snakemake wildcard such as ``"{task}"`` it returns the rule's pattern, so the rule and
the code that fills its wildcards cannot disagree. Paths are plain ``str`` (what
Snakemake, DVC and Kaldi's scp files hold), relative to the project.
"""

from __future__ import annotations

from dataclasses import dataclass

CORPUS = "corpus"  # the demo corpus (outside the workdir: it is source data, not a result)


@dataclass(frozen=True)
class Layout:
    """The artifact dirs below ``workdir`` (``params.yaml`` ``workdir``, default ``exp``)."""

    workdir: str = "exp"

    def _at(self, *parts: str) -> str:
        return "/".join((self.workdir, *parts))

    def data(self, name: str = "{name}", *files: str) -> str:
        """A validated, split copy of a Kaldi data dir (``babelflow data``)."""
        return self._at("data", name, *files)

    def split(self, name: str, nj: int | str, job: int | str = "{job}") -> str:
        """Job ``job`` of ``split<nj>/`` of a data set (Kaldi's ``split_data.sh`` layout)."""
        return self.data(name, f"split{nj}", str(job))

    def gmm(self, task: str = "{task}", *files: str) -> str:
        """A frame task's GMM system from scratch: ``lang/``, ``mono/``, ``mono_ali/``, ``tri/``, ``tri_ali/``."""
        return self._at("gmm", task, *files)

    def gmm_metrics(self) -> str:
        """Every GMM alignment's agreement with the demo's true timings (``babelflow ali-compare``)."""
        return self._at("gmm", "metrics.json")

    def feats(self, name: str = "{name}", *files: str) -> str:
        """Features + CMVN stats of a data set (``babelflow features``)."""
        return self._at("feats", name, *files)

    def egs(self, task: str = "{task}", *files: str) -> str:
        """One task's examples (``babelflow egs``)."""
        return self._at("egs", task, *files)

    def merged(self, *files: str) -> str:
        """The multi-task schedule (``babelflow merge``)."""
        return self._at("merged", *files)

    def train(self, *files: str) -> str:
        """The trained multi-task network and its logs (``babelflow train``)."""
        return self._at("train", *files)

    def models(self, task: str = "{task}", *files: str) -> str:
        """One task's standalone model (``babelflow split`` + ``priors`` + ``eval``)."""
        return self._at("models", task, *files)

    def model_metrics(self) -> str:
        """Every task model's valid accuracy beside its majority baseline (``babelflow eval --collect``)."""
        return self._at("models", "metrics.json")

    def decode(self, task: str = "{task}", *files: str) -> str:
        """A task's decoding: ``lm.arpa``, ``lang/``, ``graph/``, ``decode_test/`` (+ the GMM's ``graph_gmm/``,
        ``decode_gmm_test/``)."""
        return self._at("decode", task, *files)

    def decode_metrics(self) -> str:
        """WER per decoded task, network and GMM (``babelflow score``'s metrics, collected)."""
        return self._at("decode", "metrics.json")

    def lowres(self, system: str = "{system}", *files: str) -> str:
        """A low-resource comparison system (``babelflow.lowres``): ``train/`` (its training run),
        ``models/<task>/`` (split), ``decode/<task>/`` (the target's test set on the main graph)."""
        return self._at("lowres", system, *files)

    def lowres_metrics(self) -> str:
        """WER of each low-resource target per system (+ ``.tsv``, ``.png``)."""
        return self._at("decode", "lowres.json")

    def kaldi(self, task: str = "{task}", *files: str) -> str:
        """One frame task's Kaldi model dir (``babelflow export-kaldi --dir``)."""
        return self._at("kaldi", task, *files)


def corpus(lang: str = "{lang}", *parts: str) -> str:
    """The demo corpus of a language: ``corpus/<lang>/{data,ali,wav,dict}``."""
    return "/".join(p for p in (CORPUS, lang, *parts) if p)
