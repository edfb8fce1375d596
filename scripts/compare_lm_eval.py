"""Check lleval against lm-evaluation-harness's rolling log-likelihood on the same model and texts.

lm-evaluation-harness is not a dependency of lleval; install it next to it first:

    .venv/bin/pip install lm_eval
    .venv/bin/python scripts/compare_lm_eval.py --data /usr/share/common-licenses/Apache-2.0 \
        --sample-by paragraph --max-length 512

The model is loaded once and handed to both tools (lm-eval's ``HFLM`` accepts
a model instance), so the weights are identical. Totals are compared at
``--tolerance`` relative (default 1e-4): log-likelihood, tokens, bits per
byte, byte perplexity and word perplexity. With ``--protocol lm-eval`` (the
default) words are counted as lm-eval's wikitext task does,
``len(re.split(r"\s+", text))``; with ``--protocol rolling`` as lleval's
default does, ``len(text.split())``.
Prints a table and exits 1 if any figure differs by more than the tolerance.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from lleval.commands.score import evaluate, load
from lleval.config import EvalConfig
from lleval.data.sources import DocumentStream
from lleval.data.spec import DataSpec
from lleval.plan.protocols import lm_eval_words, split_words


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="as lleval score --model (default: built-in)")
    parser.add_argument("--data", default=None, help="as lleval score --dataset (default: built-in)")
    parser.add_argument("--sample-by", default="document")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument(
        "--protocol", choices=["rolling", "lm-eval"], default="lm-eval",
        help="lm-eval counts words with re.split(r'\\s+'), rolling with str.split()",
    )
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    from lleval.threads import cap_torch_threads

    cap_torch_threads()  # as the CLI does: the library leaves torch's threads alone

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    config = EvalConfig(
        model=args.model, dataset=args.data, sample_by=args.sample_by, text_field=args.text_field,
        limit=args.limit, max_length=args.max_length, batch_size=8, protocol=args.protocol,
    )
    loaded = load(config)
    report = evaluate(config, loaded=loaded)
    texts = [d.text for d in DocumentStream(
        DataSpec(dataset=args.data, sample_by=args.sample_by, text_field=args.text_field, limit=args.limit)
    )]

    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=1, max_length=args.max_length)
    requests = [
        Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=i) for i, t in enumerate(texts)
    ]
    lls = lm.loglikelihood_rolling(requests, disable_tqdm=True)
    ll = math.fsum(lls)
    tokens = sum(len(lm.tok_encode(t)) for t in texts)  # every token is predicted once
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    words = lm_eval_words if args.protocol == "lm-eval" else split_words
    n_words = sum(words(t) for t in texts)
    theirs = {
        "log_likelihood": ll,
        "tokens": tokens,
        "bits_per_byte": -ll / n_bytes / math.log(2),
        "byte_perplexity": math.exp(-ll / n_bytes),
        "word_perplexity": math.exp(-ll / n_words),
    }
    ours = {
        "log_likelihood": report.totals.log_likelihood,
        "tokens": report.totals.tokens,
        **{k: report.metrics[k] for k in ("bits_per_byte", "byte_perplexity", "word_perplexity")},
    }
    print(f"model: {loaded.info.name}; documents: {len(texts)}; L = {args.max_length}")
    print(f"{'figure':<18}{'lleval':>22}{'lm-eval':>22}{'rel. diff':>12}")
    worst = 0.0
    for key, theirs_value in theirs.items():
        ours_value = float(ours[key] or 0.0)
        diff = abs(ours_value - theirs_value) / max(abs(theirs_value), 1e-300)
        worst = max(worst, diff)
        print(f"{key:<18}{ours_value:>22.10g}{theirs_value:>22.10g}{diff:>12.2e}")
    verdict = "PASS" if worst <= args.tolerance else "FAIL"
    print(f"{verdict}: largest relative difference {worst:.2e} (tolerance {args.tolerance:g})")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"lleval": ours, "lm_eval": theirs, "max_rel_diff": worst, "pass": worst <= args.tolerance}, out, indent=2)
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
