"""The k2-fsa ports of Kaldi's code, imported in the one order that is safe.

``kaldi_hmm_gmm`` (OpenFst 1.7) must be loaded before ``kaldifst``: with a kaldifst built
on OpenFst 1.8, the other order deadlocks in a static initialiser, and FSTs cannot be
exchanged between the two. pyproject.toml pins versions that share OpenFst 1.7. Import
these modules from here, never directly.
"""

from __future__ import annotations

import kaldi_hmm_gmm as khg  # noqa: I001 - first, see above
import kaldifst

__all__ = ["khg", "kaldifst"]
