"""Alignments from scratch (Kaldi's prepare_lang.sh, train_mono.sh, train_deltas.sh, align_si.sh):
lang dirs from a lexicon, flat-start GMM training, Kaldi alignment dirs."""
