"""``babelflow make-lm``, ``arpa2fst`` and ``mkgraph``: Kaldi's LM and graph tools without Kaldi.

Argument order follows the Kaldi tools and scripts they stand for (``arpa2fst``,
``utils/mkgraph.sh``). Heavy packages are imported inside the commands, so that
``babelflow --help`` stays fast and imports neither torch nor the k2-fsa packages.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("babelflow")


def cmd_make_lm(args: argparse.Namespace) -> None:
    from ..errors import BabelflowError
    from .lm import arpa_to_g, make_lm

    if args.g_fst and not args.vocab:
        raise BabelflowError("make-lm: --g-fst needs --vocab (a lang dir or its words.txt)")
    info = make_lm(args.text, args.order, args.out_arpa, has_keys=args.has_keys, vocab=args.vocab, unk=args.unk)
    log.info("make-lm %s -> %s: %d sentences, %d tokens (%d OOV), n-grams %s, discounts %s", args.text,
             args.out_arpa, info["sentences"], info["tokens"], info["oov_tokens"], info["ngrams"], info["discounts"])
    if args.g_fst:
        from pathlib import Path

        words = Path(args.vocab) / "words.txt" if Path(args.vocab).is_dir() else args.vocab
        g = arpa_to_g(args.out_arpa, words, args.g_fst)
        log.info("make-lm: G %s: %d states", args.g_fst, g.num_states)


def cmd_arpa2fst(args: argparse.Namespace) -> None:
    from .lm import arpa_to_g

    g = arpa_to_g(args.arpa, args.read_symbol_table, args.out_fst, disambig_symbol=args.disambig_symbol)
    log.info("arpa2fst %s -> %s: %d states", args.arpa, args.out_fst, g.num_states)


def cmd_mkgraph(args: argparse.Namespace) -> None:
    from .graph import mkgraph

    info = mkgraph(args.lang_dir, args.grammar, args.model_dir, args.graph_dir, self_loop_scale=args.self_loop_scale,
                   transition_scale=args.transition_scale)
    log.info("mkgraph -> %s: HCLG %d states, %d arcs (N=%d, P=%d, %d pdfs) in %.2f s", args.graph_dir,
             info["num_states"], info["num_arcs"], info["context_width"], info["central_position"], info["num_pdfs"],
             info["total_s"])


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-lm", help="Kneser-Ney n-gram ARPA LM from text (Kaldi make_kn_lm.py / SRILM)")
    p.add_argument("--order", type=int, default=3, help="n-gram order, at least 2 (default: 3)")
    p.add_argument("--has-keys", action=argparse.BooleanOptionalAction, default=True,
                   help="TEXT is a Kaldi text file, utterance key first (default); --no-has-keys: plain sentences")
    p.add_argument("--vocab", metavar="LANG_OR_WORDS",
                   help="a lang dir or words.txt: other words are mapped to the OOV word")
    p.add_argument("--unk", metavar="WORD", help="the OOV word (default: the lang dir's oov.txt, else <unk>)")
    p.add_argument("--g-fst", metavar="G.fst", help="also write G.fst for --vocab's words.txt (as arpa2fst)")
    p.add_argument("text", help="training text")
    p.add_argument("out_arpa", help="the ARPA file to write")
    p.set_defaults(func=cmd_make_lm)

    p = sub.add_parser("arpa2fst", help="ARPA LM -> G.fst (Kaldi arpa2fst --disambig-symbol=#0)")
    p.add_argument("--disambig-symbol", default="#0", help="input label of back-off arcs (default: #0)")
    p.add_argument("--read-symbol-table", required=True, metavar="WORDS_TXT", help="the lang dir's words.txt")
    p.add_argument("arpa", help="the ARPA LM")
    p.add_argument("out_fst", help="G.fst to write")
    p.set_defaults(func=cmd_arpa2fst)

    p = sub.add_parser("mkgraph", help="HCLG decoding graph (utils/mkgraph.sh)")
    p.add_argument("--self-loop-scale", type=float, default=1.0,
                   help="mkgraph.sh's --self-loop-scale (default 1.0; use 0.1 for GMM/plain nnet3 at acwt 0.1)")
    p.add_argument("--transition-scale", type=float, default=1.0, help="mkgraph.sh's --transition-scale (1.0)")
    p.add_argument("lang_dir", help="Kaldi lang dir (L_disambig.fst, words.txt, phones/)")
    p.add_argument("grammar", help="G.fst (vector or const) or an ARPA LM (.arpa, .arpa.gz)")
    p.add_argument("model_dir", help="final.mdl (or trans.mdl) + tree: a GMM dir, exp/models/<task>, exp/kaldi/<task>")
    p.add_argument("graph_dir", help="the graph dir to write (HCLG.fst, words.txt, phones/, ...)")
    p.set_defaults(func=cmd_mkgraph)
