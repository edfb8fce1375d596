"""What several test files need: data files, and naive reference loops written from each
protocol's description (one window at a time, full logits, float64 log-softmax), never
from lleval's code."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence


def write_jsonl(path: Path, texts: Sequence[Any], field: str = "text") -> str:
    """A JSON-lines file with one ``{field: text}`` object per line (``texts`` may also hold
    whole row objects, written as they are); returns its path as a string."""
    rows = [t if isinstance(t, dict) else {field: t} for t in texts]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def score_report_json(documents: Sequence[dict[str, Any]], tokenizer: str = "tok-a") -> dict[str, Any]:
    """The JSON of a complete score report (it fits the shipped schema, so ``lleval compare``
    reads it) around hand-made ``documents`` rows (index, log_likelihood, tokens, bytes,
    words); the totals are their sums, the tokenizer's fingerprint is ``tokenizer``."""
    from lleval.metrics import DocumentResult, Totals
    from lleval.report.blocks import DatasetBlock, ModelBlock, ProtocolBlock, TimingBlock, TokenizerBlock
    from lleval.report.score import Report

    docs = [DocumentResult.from_dict(d) for d in documents]
    totals = Totals()
    for doc in docs:
        totals.add(doc)
    return Report(
        lleval_version="0.1.0", created="2026-12-02T00:00:00+00:00", complete=True,
        model=ModelBlock(name="m", source="local", revision=None, sha256=None, dtype="float32", device="cpu",
                         parameters=1000, max_positions=64, device_map=None, cache="off", head_dtype="float32"),
        tokenizer=TokenizerBlock(name="m", vocab_size=320, fingerprint=tokenizer, bos_token_id=0, eos_token_id=0),
        dataset=DatasetBlock(spec="d", config=None, split="train", text_field="text", sample_by="document", limit=None,
                             streaming=False, rows=len(docs), documents=len(docs), skipped_empty=0, fingerprint="fp"),
        protocol=ProtocolBlock(name="rolling", max_length=16, stride=16, prefix_token=0, prefix_token_text="<s>",
                               concat=None, special_tokens=False, first_token_scored=True,
                               word_count="len(text.split())", scores_every_token=True, windows="rolling",
                               stream_tokens=totals.tokens, unscored_tokens=0),
        timing=TimingBlock(seconds=1.0, load_seconds=0.5, scoring_seconds=0.5, tokens_per_second=2.0 * totals.tokens,
                           windows=len(docs), batches=len(docs), padding_share=0.0, batching=None,
                           out_of_memory_splits=0),
        environment={"python": "3.11", "platform": "linux", "torch": "2", "transformers": "5", "datasets": "3",
                     "lleval": "0.1.0", "cpu": {"model": "cpu", "capability": "avx2", "bf16_matmul": None,
                                                "fp16_matmul": None}},
        distributed=None, notes=[], totals=totals, documents=docs,
        intervals={"perplexity": None, "bits_per_byte": None},
        bootstrap={"resamples": 0, "seed": 0, "level": 0.95, "unit": "document"},
    ).to_dict()


def rel_close(a: float, b: float, tol: float) -> bool:
    """|a - b| <= tol * max(|a|, |b|)."""
    return math.isclose(a, b, rel_tol=tol, abs_tol=0.0)


def window_logprobs(model: Any, tokens: Sequence[int], device: str = "cpu") -> Any:
    """float64 log-softmax of the model's logits for one unpadded window: (T, V)."""
    import torch

    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([list(tokens)], device=device)).logits[0].double(), dim=-1)


def naive_rolling_logprobs(
    model: Any, tokens: Sequence[int], max_length: int, stride: int, device: str = "cpu"
) -> list[float]:
    """lleval's rolling protocol, one window at a time.

    Token ``i >= 1`` of ``tokens`` is predicted once. The first window predicts
    tokens 1..L; then each window predicts the next S tokens, reading the L
    tokens just before the last one it predicts (fewer at the start).
    """
    out: list[float] = []
    target, first = 1, True
    while target < len(tokens):
        count = max_length if first else stride
        first = False
        last = min(target + count, len(tokens)) - 1  # last position predicted
        begin = max(0, last - max_length)
        logp = window_logprobs(model, tokens[begin:last], device).cpu()
        for pos in range(target, last + 1):
            out.append(float(logp[pos - 1 - begin, tokens[pos]]))
        target = last + 1
    return out


def hf_guide_targets(seq_len: int, max_length: int, stride: int) -> list[tuple[int, list[int]]]:
    """The transformers perplexity guide's loop, restated: a window ``[begin, end)`` every
    ``stride`` tokens whose labels before the last ``end - prev_end`` are masked to -100,
    then shifted inside the model (so a window's first position is never a label).
    Returns ``(begin, positions scored)`` per window."""
    windows, prev_end = [], 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        labelled = range(end - trg_len, end)
        windows.append((begin, [p for p in labelled if p > begin]))
        prev_end = end
        if end == seq_len:
            break
    return windows


def naive_hf_guide(model: Any, ids: Sequence[int], max_length: int, stride: int) -> tuple[float, int]:
    """Log-likelihood and token count of the guide's loop (see `hf_guide_targets`)."""
    ll, count = 0.0, 0
    for begin, positions in hf_guide_targets(len(ids), max_length, stride):
        end = min(begin + max_length, len(ids))
        logp = window_logprobs(model, ids[begin:end])
        for pos in positions:
            ll += float(logp[pos - 1 - begin, ids[pos]])
            count += 1
    return ll, count


def naive_llama_cpp(model: Any, stream: Sequence[int], n_ctx: int, bos: int | None) -> tuple[float, int, float]:
    """llama.cpp's perplexity loop: chunks of n_ctx, BOS over the first token, score
    n_ctx/2+1 .. n_ctx-1. Returns (log-likelihood, tokens, sum of squared log-probs)."""
    ll, count, sq = 0.0, 0, 0.0
    for k in range(len(stream) // n_ctx):
        chunk = list(stream[k * n_ctx : (k + 1) * n_ctx])
        if bos is not None:
            chunk[0] = bos
        logp = window_logprobs(model, chunk)
        for pos in range(n_ctx // 2 + 1, n_ctx):
            value = float(logp[pos - 1, chunk[pos]])
            ll += value
            sq += value * value
            count += 1
    return ll, count, sq


def units_of(sequences: Sequence[Sequence[int]], max_length: int, stride: int) -> list[Any]:
    """Engine units for token sequences, one document each (position 0 of a sequence is
    its document's first token and, having no context, is never scored)."""
    import numpy as np

    from lleval.stream import Row, Unit
    from lleval.windows import rolling_spans

    return [
        Unit(list(seq), rolling_spans(len(seq), max_length, stride), (Row(i, len(seq), 1, f"{i:064x}"),), i,
             np.zeros(1, dtype=np.int64))
        for i, seq in enumerate(sequences)
    ]


def document_sums(scorer: Any, units: Sequence[Any], options: Any) -> list[Any]:
    """Score units with the engine and fold them with `DocumentSums`: one result per document."""
    return document_sums_and_stats(scorer, units, options)[0]


def document_sums_and_stats(scorer: Any, units: Sequence[Any], options: Any) -> tuple[list[Any], Any]:
    """`document_sums`, and the engine's counts (`EngineStats`) as the last item carried them."""
    from lleval.engine.scoring import engine_stream
    from lleval.stream import EngineStats, ScoredBlock
    from lleval.reducers.documents import DocumentSums

    sums, stats = DocumentSums(), EngineStats()
    for item in engine_stream(scorer, units, options):
        stats = item.stats
        if isinstance(item, ScoredBlock):
            sums.update(item)
    return sums.documents, stats


# transformers' llama names -> GGUF tensor names (llama.cpp's convention)
_GGUF_NAMES = (
    ("model.embed_tokens.", "token_embd."), ("model.norm.", "output_norm."), ("lm_head.", "output."),
    ("model.layers.", "blk."), (".self_attn.q_proj.", ".attn_q."), (".self_attn.k_proj.", ".attn_k."),
    (".self_attn.v_proj.", ".attn_v."), (".self_attn.o_proj.", ".attn_output."), (".mlp.gate_proj.", ".ffn_gate."),
    (".mlp.up_proj.", ".ffn_up."), (".mlp.down_proj.", ".ffn_down."), (".input_layernorm.", ".attn_norm."),
    (".post_attention_layernorm.", ".ffn_norm."),
)


def write_tiny_gguf(llama_dir: Path, path: Path) -> Path:
    """A float32 GGUF file of the tiny Llama and its byte-level BPE tokenizer: a .gguf that
    converts in milliseconds, for tests of the GGUF path and its cache."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(config.vocab_size)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = [t for t, _ in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t == tokenizer.eos_token else 1 for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    writer.add_eos_token_id(tokenizer.eos_token_id)
    for name, tensor in model.state_dict().items():
        for old, new in _GGUF_NAMES:
            name = name.replace(old, new)
        writer.add_tensor(name, tensor.detach().float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def stepwise_cheapest_runs(widths: list[int], max_rows: int, budget: int | None, overhead: int) -> list[tuple[int, int]]:
    """The batch planner as first written (one numpy step per window, float64 costs), kept
    as the reference its faster rewrite in `lleval.plan.batching` must agree with exactly."""
    import numpy as np

    n = len(widths)
    w = np.asarray(widths, dtype=np.float64)
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    cut = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        rows_cap = max_rows if budget is None else max(1, min(max_rows, budget // max(1, widths[end - 1])))
        starts = np.arange(max(0, end - rows_cap), end)
        rows = end - starts
        padded = rows * w[starts]
        allowed = (padded <= budget) | (rows == 1) if budget is not None else np.ones(len(rows), dtype=bool)
        costs = np.where(allowed, best[starts] + padded + overhead, np.inf)
        k = int(np.argmin(costs))
        best[end], cut[end] = costs[k], starts[k]
    runs = []
    end = n
    while end > 0:
        runs.append((int(cut[end]), end))
        end = int(cut[end])
    return runs[::-1]
