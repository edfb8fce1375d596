"""The logits kernel of a transformers causal LM: logits at scored positions only, a slice
of positions at a time, so no (B, T, V) tensor is ever held; and what the batch planner
needs to know of the model (its vocabulary, its working set per token).

The in-process evaluator's backend (`lleval.backends.live`) builds its scorer from the
same slices. torch is imported inside the functions: importing this module loads none of it.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Iterator

from lleval.backends.base import LOGITS_SLICE_BYTES, slice_positions

if TYPE_CHECKING:  # torch is imported only when a model is scored
    import torch  # noqa: F401

# Architectures whose causal-LM head is a plain ``logits = lm_head(hidden)``:
# for these lleval projects hidden states to logits itself, a slice of
# positions at a time, and only at scored positions. Other architectures
# (soft-capped or scaled logits, for example Gemma 2 or Cohere) go through the
# model's own forward with ``logits_to_keep`` so their logits stay exact.
PLAIN_HEAD_MODEL_TYPES = frozenset(
    {
        "gpt2", "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe",
        "gpt_neox", "phi", "phi3", "olmo", "olmo2", "starcoder2", "gptj", "opt", "smollm3",
        "stablelm", "gpt_bigcode", "bloom", "falcon",
    }
)



def is_half(model: Any) -> bool:
    """True when the model's parameters are bfloat16 or float16."""
    import torch

    return next(model.parameters()).dtype in (torch.bfloat16, torch.float16)


def make_logits_slices(model: Any, float32_head: bool = True, inference: bool = True) -> Any:
    """A `LogitsSlices` for a transformers causal LM: logits at scored positions, a slice at a time.

    For plain-head architectures the decoder runs once, hidden states are
    gathered at the scored positions only, and the output projection runs
    ``per_slice`` positions at a time, so no (B, T, V) tensor is ever held.
    Other architectures use the model's forward with ``logits_to_keep`` set
    to the scored positions (holding (scored positions, V) logits), or, for
    the oldest, full logits.

    A right-padded batch goes in without its attention mask: under causal
    attention a real token never sees the pads that follow it, and without a
    mask SDPA takes its causal kernel, which skips the masked half of the
    score matrix (5% faster on 400-token windows, 16% on 2048-token ones,
    same numbers at real positions).

    A model in bfloat16 or float16 runs its body in that dtype but, with
    ``float32_head`` (the default), the output projection in float32 (see
    `float32_projection`).

    ``inference`` false: under ``torch.no_grad`` rather than inference mode, for a model a
    training loop goes on training (`lleval.backends.live`): a tensor a module caches in
    inference mode (a rotary table it recomputes) could not be saved for a later backward.
    """
    import torch

    device = next(model.parameters()).device
    head = model.get_output_embeddings()
    plain = has_plain_head(model)
    if plain and float32_head and head.weight.dtype in (torch.bfloat16, torch.float16):
        head = float32_projection(head)
    keeps = "logits_to_keep" in inspect.signature(model.forward).parameters

    @(torch.inference_mode() if inference else torch.no_grad())
    def slices(
        input_ids: torch.Tensor, attention_mask: torch.Tensor, score_mask: torch.Tensor, per_slice: int
    ) -> Iterator[torch.Tensor]:
        input_ids = input_ids.to(device)
        mask = score_mask.to(device)
        attention = None if right_padded(attention_mask) else attention_mask.to(device)
        if plain:
            hidden = model.base_model(
                input_ids=input_ids, attention_mask=attention, use_cache=False
            ).last_hidden_state  # (B, T, H)
            selected = hidden[mask]  # (N, H)
            for i in range(0, selected.shape[0], per_slice):
                yield head(selected[i : i + per_slice])  # (n, V)
            return
        if keeps:
            logits = model(
                input_ids=input_ids, attention_mask=attention, use_cache=False, logits_to_keep=mask
            ).logits  # (N, V)
        else:
            logits = model(input_ids=input_ids, attention_mask=attention).logits[mask]
        logits = logits.reshape(-1, logits.shape[-1])
        for i in range(0, logits.shape[0], per_slice):
            yield logits[i : i + per_slice]

    return slices


def float32_projection(head: Any) -> Any:
    """``head`` (a Linear in bf16/fp16) as a float32 projection of the hidden states: a
    float32 copy of its weight (vocabulary x hidden x 4 bytes) and its bias.

    Rounding the logits to bf16 is most of bf16's error. Measured on SmolLM2
    (the built-in sample, against float32, AMD EPYC Zen 5): with a bf16 head,
    mean KL 0.00105 nats, top-token agreement 97.1%, perplexity +0.105% (95%
    interval +0.02% to +0.19%); with a float32 head, mean KL 0.00066,
    agreement 98.1%, perplexity -0.016% (-0.13% to +0.10%), for 28% of the
    bf16 throughput on this small model (1,270 vs 1,770 tokens/s; float32:
    650), whose 49,152-token head is a fifth of its FLOPs; on
    billion-parameter models the head is a few percent.
    """
    import torch

    weight = head.weight.detach().float()  # (V, H)
    bias = None if getattr(head, "bias", None) is None else head.bias.detach().float()

    def project(hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden.float(), weight, bias)  # (n, V) float32

    return project


def activation_bytes_per_token(model: Any) -> int:
    """Working-set bytes per batch token for `lleval.plan.batching` (activations, plus logits
    for the architectures whose own forward returns them for every scored position)."""
    from lleval.plan.batching import bytes_per_token

    element = next(model.parameters()).element_size()
    return bytes_per_token(model.config, element, 0 if has_plain_head(model) else vocab_size(model))


def has_plain_head(model: Any) -> bool:
    """True when lleval may apply the output projection itself (see `PLAIN_HEAD_MODEL_TYPES`)."""
    return model.config.model_type in PLAIN_HEAD_MODEL_TYPES and model.get_output_embeddings() is not None


def right_padded(attention_mask: Any) -> bool:
    """True when every row is ones then zeros (real tokens first, padding after)."""
    return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())


def vocab_size(model: Any) -> int:
    """Rows of the output projection (the width of the logits)."""
    head = model.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)


def make_scorer(model: Any, slice_bytes: int = LOGITS_SLICE_BYTES) -> Any:
    """A `TokenScorer` for a transformers causal LM that never holds (B, T, V) logits."""
    from lleval.engine.kernels import scorer_from_slices

    return scorer_from_slices(make_logits_slices(model), slice_positions(vocab_size(model), slice_bytes))
