"""The built-in demo corpus: multilingual speech synthesised by espeak-ng, with true phone timings."""
