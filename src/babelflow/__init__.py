"""babelflow: Kaldi-style multilingual / multi-task acoustic model training in PyTorch."""

__version__ = "0.1.0"
