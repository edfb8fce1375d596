"""Check ``--protocol hf-guide`` against the transformers guide "Perplexity of fixed-length models".

The guide's loop is restated here as the guide prints it: the texts joined with
two newlines and tokenized once (default special tokens); a window of up to L
tokens every S tokens; labels before the last ``trg_len`` set to -100; the
model's mean ``loss`` times the number of loss tokens (valid labels minus the
batch size, the guide's label-shift correction) summed, and
``ppl = exp(sum / tokens)``. lleval runs the same model object.

    .venv/bin/python scripts/compare_hf_guide.py --data /usr/share/common-licenses/GPL-3 \
        --max-length 1024 --stride 512

Exits 1 if the perplexities differ in the 4th significant digit.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from lleval.commands.score import evaluate, load
from lleval.config import EvalConfig
from lleval.data.sources import DocumentStream
from lleval.data.spec import DataSpec


def guide_perplexity(model, tokenizer, texts, max_length, stride):  # type: ignore[no-untyped-def]
    encodings = tokenizer("\n\n".join(texts), return_tensors="pt")
    seq_len = encodings.input_ids.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = encodings.input_ids[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            outputs = model(input_ids, labels=target_ids)
            neg_log_likelihood = outputs.loss
        num_valid_tokens = (target_ids != -100).sum().item()
        num_loss_tokens = num_valid_tokens - target_ids.size(0)
        nll_sum += float(neg_log_likelihood) * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return math.exp(nll_sum / n_tokens), n_tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--data", default=None)
    parser.add_argument("--sample-by", default="document")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--stride", type=int, default=512)
    args = parser.parse_args()
    from lleval.threads import cap_torch_threads

    cap_torch_threads()  # as the CLI does: the library leaves torch's threads alone
    config = EvalConfig(
        model=args.model, dataset=args.data, sample_by=args.sample_by, protocol="hf-guide",
        max_length=args.max_length, stride=args.stride,
    )
    loaded = load(config)
    report = evaluate(config, loaded=loaded)
    texts = [d.text for d in DocumentStream(DataSpec(dataset=args.data, sample_by=args.sample_by))]
    ppl, n = guide_perplexity(loaded.model, loaded.tokenizer, texts, args.max_length, args.stride)
    ours = report.metrics["perplexity"] or math.nan
    same = f"{ours:.4g}" == f"{ppl:.4g}"
    print(f"model: {loaded.info.name}; L = {args.max_length}, S = {args.stride}")
    print(f"lleval hf-guide: perplexity {ours:.8g} over {report.totals.tokens} tokens")
    print(f"guide loop:      perplexity {ppl:.8g} over {n} tokens")
    print(f"{'PASS' if same else 'FAIL'}: relative difference {abs(ours - ppl) / ppl:.2e}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
