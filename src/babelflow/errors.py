"""The one exception type the CLI turns into a clean message (no traceback)."""

from __future__ import annotations


class BabelflowError(Exception):
    """A user-facing error: bad input, bad config. The message names the file, line or key."""


def where(path: object, line: int | None = None, key: str | None = None) -> str:
    """Format a location prefix such as ``data/x/utt2spk:12 (utt 'a-1')``."""
    loc = str(path)
    if line is not None:
        loc += f":{line}"
    if key is not None:
        loc += f" (key '{key}')"
    return loc
