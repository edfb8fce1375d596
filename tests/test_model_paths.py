"""The model-side fast paths (no attention mask for right padding, in-place log-sum-exp)
give the numbers of one unpadded sequence at a time with a full log-softmax."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lleval.backends.hf import make_scorer, right_padded
from lleval.engine.kernels import target_logprobs

LENGTHS = [17, 5, 30, 1]


def _model(folder: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _one_at_a_time(model: torch.nn.Module, sequences: list[list[int]]) -> list[float]:
    out: list[float] = []
    with torch.no_grad():
        for seq in sequences:
            logits = model(torch.tensor([seq[:-1]])).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1)
            out.extend(float(logp[i, seq[i + 1]]) for i in range(len(seq) - 1))
    return out


def _batch(sequences: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, ...]:
    width = max(len(s) - 1 for s in sequences)
    shape = (len(sequences), width)
    ids, labels = torch.full(shape, pad_id), torch.full(shape, pad_id)
    attention, scored = torch.zeros(shape, dtype=torch.long), torch.zeros(shape, dtype=torch.bool)
    for b, seq in enumerate(sequences):
        n = len(seq) - 1
        cols = slice(width - n, width) if left else slice(0, n)
        ids[b, cols], labels[b, cols] = torch.tensor(seq[:-1]), torch.tensor(seq[1:])
        attention[b, cols], scored[b, cols] = 1, True
    return ids, attention, labels, scored


@pytest.mark.parametrize("kind", ["tiny_model_dir", "tiny_llama_dir"])
@pytest.mark.parametrize("pad_id", [0, 7])
def test_right_padded_batch_equals_one_sequence_at_a_time(kind: str, pad_id: int, request: pytest.FixtureRequest) -> None:
    model = _model(request.getfixturevalue(kind))
    generator = torch.Generator().manual_seed(1)
    sequences = [torch.randint(0, 300, (n + 1,), generator=generator).tolist() for n in LENGTHS]
    expected = _one_at_a_time(model, sequences)
    got = make_scorer(model)(*_batch(sequences, pad_id, left=False)).double()
    assert got.shape == (sum(LENGTHS),)
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-5)


def test_pad_token_never_changes_a_number(tiny_llama_dir: Path) -> None:
    model = _model(tiny_llama_dir)
    sequences = [list(range(3, 3 + n + 1)) for n in LENGTHS]
    scorer = make_scorer(model)
    a = scorer(*_batch(sequences, 0, left=False))
    b = scorer(*_batch(sequences, 250, left=False))
    assert torch.equal(a, b)


def test_left_padded_batch_keeps_its_mask(tiny_llama_dir: Path) -> None:
    # Not what the engine sends, but a scorer must not be wrong for it: with
    # pads first, the attention mask is needed and is passed on.
    model = _model(tiny_llama_dir)
    sequences = [list(range(10, 10 + n + 1)) for n in (6, 6, 6)]  # equal lengths: positions agree
    batch = _batch(sequences, 0, left=True)
    assert right_padded(batch[1])
    sequences[1] = sequences[1][:4]
    batch = _batch(sequences, 0, left=True)
    assert not right_padded(batch[1])
    got = make_scorer(model)(*batch)
    # The left-padded row starts at a later position, so compare with the model's own
    # masked forward rather than an unpadded run.
    with torch.no_grad():
        logits = model(input_ids=batch[0], attention_mask=batch[1]).logits.double()
    expected = torch.log_softmax(logits, -1).gather(2, batch[2].unsqueeze(2)).squeeze(2)[batch[3]]
    assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-5)


@given(st.lists(st.lists(st.booleans(), min_size=1, max_size=6), min_size=1, max_size=4).filter(
    lambda rows: len({len(r) for r in rows}) == 1
))
@settings(max_examples=60, deadline=None)
def test_right_padded_means_ones_then_zeros(rows: list[list[bool]]) -> None:
    mask = torch.tensor(rows, dtype=torch.long)
    expected = all(r == sorted(r, reverse=True) for r in rows)
    assert right_padded(mask) == expected


@pytest.mark.parametrize("scale", [1.0, 50.0])
def test_in_place_log_sum_exp_matches_log_softmax(scale: float) -> None:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(9, 1000, generator=generator) * scale
    targets = torch.randint(0, 1000, (9,), generator=generator)
    expected = torch.log_softmax(logits.double(), dim=1)[torch.arange(9), targets]
    got = target_logprobs(logits.clone(), targets)
    assert torch.allclose(got.double(), expected, rtol=1e-6, atol=1e-5)


def test_log_sum_exp_of_non_finite_rows_is_not_finite() -> None:
    logits = torch.tensor([[0.0, 1.0], [float("-inf"), float("-inf")], [float("nan"), 0.0], [float("inf"), 0.0]])
    got = target_logprobs(logits.clone(), torch.tensor([1, 0, 1, 1]))
    assert torch.isfinite(got[0]) and not torch.isfinite(got[1:]).any()


def test_half_precision_models_project_in_float32(tiny_llama_dir: Path) -> None:
    """A bf16 body, a float32 head: the logits are the float32 product of the bf16 hidden
    states and the head's weight, not that product rounded to bf16."""
    from transformers import AutoModelForCausalLM

    from lleval.backends.hf import make_logits_slices

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16).eval()
    ids = torch.tensor([[5, 9, 33, 120, 7, 64]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    (logits,) = list(make_logits_slices(model)(ids, torch.ones_like(ids), mask, 1 << 20))
    with torch.no_grad():
        hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state[0]  # (T, H) bf16
    expected = hidden.float() @ model.lm_head.weight.float().T
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, expected, rtol=1e-6, atol=1e-6)
    assert not torch.equal(logits, expected.bfloat16().float())  # more precise than bf16 logits
