"""Per-task training examples (Kaldi ``get_egs.sh`` semantics) in a memory-mappable layout."""
