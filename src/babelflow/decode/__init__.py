"""Decoding and scoring: LMs, graphs (mkgraph.sh), decoders, WER (score.sh)."""
