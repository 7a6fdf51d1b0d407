"""Kaldi's ``local.conf`` of ``egs/babel_multilang`` (sourced by ``run_tdnn_multilingual.sh``), read without bash.

It is a bash fragment of assignments: arrays ``lang_list=(101-cantonese 102-assamese ...)`` and
``decode_lang_list=(...)`` (may span lines), strings ``lang2weight="0.3,0.3,0.4"`` (one weight per
language of ``lang_list``, same order) and flags such as ``use_pitch=true``. babelflow reads only
these assignments; anything that needs a shell (substitutions, conditionals) is refused with its line,
rather than guessed at: the file is code in Kaldi, data here.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from dataclasses import dataclass, field

from ..errors import BabelflowError

_ASSIGN = re.compile(r"^\s*(?:export\s+|declare\s+-a\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


@dataclass
class LocalConf:
    path: str
    values: dict[str, str | list[str]] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)  # variable -> line of its (last) assignment

    @property
    def lang_list(self) -> list[str]:
        v = self.values.get("lang_list", [])
        return v if isinstance(v, list) else v.split()

    @property
    def decode_lang_list(self) -> list[str]:
        v = self.values.get("decode_lang_list", [])
        return v if isinstance(v, list) else v.split()

    def where(self, name: str) -> str:
        return f"{self.path}:{self.lines[name]}" if name in self.lines else self.path

    def weights(self) -> dict[str, float]:
        """lang_list -> lang2weight (1.0 each without one), checked as combine_egs.sh would need them."""
        langs = self.lang_list
        if not langs:
            raise BabelflowError(f"{self.path}: no lang_list=( ... ) array")
        raw = self.values.get("lang2weight")
        if raw is None:
            return dict.fromkeys(langs, 1.0)
        if isinstance(raw, list):
            raw = ",".join(raw)
        items = [x for x in raw.split(",") if x.strip()]
        if len(items) != len(langs):
            raise BabelflowError(f"{self.where('lang2weight')}: lang2weight has {len(items)} weight(s), "
                                 f"lang_list ({self.where('lang_list')}) {len(langs)} language(s)")
        out = {}
        for lang, item in zip(langs, items):
            try:
                w = float(item)
            except ValueError:
                w = float("nan")
            if not (math.isfinite(w) and w > 0):
                raise BabelflowError(f"{self.where('lang2weight')}: lang2weight of {lang}: expected a number > 0, "
                                     f"got '{item.strip()}'")
            out[lang] = w
        return out


def read_local_conf(path: str | os.PathLike) -> LocalConf:
    """The assignments of ``path``; a line that is not one (or a comment) is an error naming it."""
    try:
        text = open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as e:
        raise BabelflowError(f"{path}: cannot read ({e})") from None
    conf = LocalConf(str(path))
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start = i
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        m = _ASSIGN.match(line)
        if not m:
            raise BabelflowError(f"{path}:{start + 1}: not an assignment babelflow reads without a shell: {line}")
        name, value = m.groups()
        if "$" in value or "`" in value:
            raise BabelflowError(f"{path}:{start + 1}: {name}: shell expansion ($, `) is not read; "
                                 "write the values out")
        if value.startswith("("):  # an array, perhaps over several lines (each may end in a comment)
            value = _strip_comment(value)
            while ")" not in value and i < len(lines):
                value += " " + _strip_comment(lines[i].strip())
                i += 1
            body, close, rest = value[1:].partition(")")
            if not close or rest.strip():
                raise BabelflowError(f"{path}:{start + 1}: {name}: unterminated or trailing text after ( ... )")
            conf.values[name] = _words(body, path, start + 1, name)
        else:
            words = _words(value, path, start + 1, name)
            conf.values[name] = " ".join(words)
        conf.lines[name] = start + 1
    return conf


def _strip_comment(s: str) -> str:
    out, quote = [], None
    for ch in s:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            break
        out.append(ch)
    return "".join(out)


def _words(value: str, path, line: int, name: str) -> list[str]:
    try:
        return shlex.split(value, comments=True)
    except ValueError as e:
        raise BabelflowError(f"{path}:{line}: {name}: {e}") from None
