"""Kaldi data directories: validate them up front and split them per speaker for parallel jobs.

Failing at load time with ``file:line (key ...)`` messages is far cheaper than discovering a
bad utterance hours into feature extraction or training.
"""
