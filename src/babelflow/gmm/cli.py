"""``babelflow prepare-lang``: a Kaldi lang dir from a lexicon (utils/prepare_lang.sh without Kaldi)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import BabelflowError
from .options import LangOptions

log = logging.getLogger("babelflow")


def cmd_prepare_lang(args: argparse.Namespace) -> None:
    from .lang import prepare_lang

    nonsil = None
    o = LangOptions.from_args(args)
    if args.nonsilence_phones and args.phone_symbols:
        raise BabelflowError("prepare-lang: --nonsilence-phones or --phone-symbols, not both")
    if args.nonsilence_phones:
        try:
            nonsil = Path(args.nonsilence_phones).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise BabelflowError(f"{args.nonsilence_phones}: file not found") from None
    elif args.phone_symbols:  # a model's phones.txt: keep its phone ids (sil first, then the rest in id order)
        from ..io import read_table

        rows = sorted((int(v[0]), k) for _, k, v in read_table(args.phone_symbols, 2, 2))
        nonsil = [k for i, k in rows if i > 0 and k != o.sil_phone and not k.startswith("#")]
    lang = prepare_lang(args.lexicon, args.lang_dir, sil_phone=o.sil_phone, oov_word=o.oov_word,
                        position_dependent_phones=o.position_dependent_phones, num_sil_states=o.num_sil_states,
                        num_nonsil_states=args.num_nonsil_states, sil_prob=o.sil_prob, nonsilence_phones=nonsil,
                        add_oov=args.add_oov)
    log.info("prepare-lang %s -> %s: %d phones (+%d disambig), %d words", args.lexicon, args.lang_dir,
             len(lang.silence_phones) + len(lang.nonsilence_phones), len(lang.disambig_phones), len(lang.words) - 4)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare-lang", help="lexicon -> Kaldi lang dir (utils/prepare_lang.sh)")
    LangOptions.add_arguments(p)
    p.add_argument("--add-oov", action="store_true", help="add '<oov-word> <sil-phone>' if the lexicon lacks it")
    p.add_argument("--num-nonsil-states", type=int, default=3, help="states of the other phones' HMMs (default: 3)")
    p.add_argument("--phone-symbols", metavar="PHONES_TXT",
                   help="keep the phone ids of this phones.txt (a model's: its tree and TransitionModel use them)")
    p.add_argument("--nonsilence-phones", metavar="FILE",
                   help="a dict dir's nonsilence_phones.txt: phone order (ids) and shared roots; "
                        "default: the lexicon's phones in C sort order")
    p.add_argument("lexicon", help="lexicon.txt (word phone...) or lexiconp.txt (word prob phone...)")
    p.add_argument("lang_dir", help="the lang dir to write")
    p.set_defaults(func=cmd_prepare_lang)


def cmd_ali_compare(args: argparse.Namespace) -> None:
    import json

    from ..io import write_text
    from .compare import compare_alignments

    if args.collect:  # KEY.SUBKEY=FILE items -> one nested JSON (DVC metrics)
        out: dict = {}
        for item in args.items:
            key, sep, path = item.partition("=")
            if not sep:
                raise BabelflowError(f"ali-compare --collect: expected KEY=FILE, got '{item}'")
            task, _, leaf = key.rpartition(".")  # task names may hold dots
            node = out.setdefault(task, {}) if task else out
            try:
                node[leaf] = json.loads(Path(path).read_text())
            except (OSError, ValueError) as e:
                raise BabelflowError(f"{path}: cannot read ({e})") from None
        write_text(args.collect, json.dumps(out, indent=2, sort_keys=True) + "\n")
        return
    if len(args.items) != 2:
        raise BabelflowError("ali-compare: give REF_ALI_DIR HYP_ALI_DIR")
    text = json.dumps(compare_alignments(*args.items), sort_keys=True) + "\n"
    if args.out:
        write_text(args.out, text)
    else:
        print(text, end="")


def register_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ali-compare", help="alignment quality against a reference alignment dir (phones by symbol)")
    p.add_argument("--out", help="write the JSON here (default: stdout)")
    p.add_argument("--collect", metavar="METRICS_JSON", help="instead: gather KEY=FILE results into one JSON")
    p.add_argument("items", nargs="+", metavar="REF_ALI_DIR HYP_ALI_DIR | KEY=FILE")
    p.set_defaults(func=cmd_ali_compare)
