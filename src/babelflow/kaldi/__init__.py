"""Readers and writers for Kaldi's own file formats (models, alignments, tables).

They are byte-compatible with the Kaldi binaries so that babelflow can consume an
existing Kaldi experiment directory and hand its products back to Kaldi tools.
"""
