"""A model a training loop holds in memory, as a `LoadedModel`: `lleval.Evaluator`'s backend.

`open_live` checks the module once, when the evaluator is built, and `LiveModel.loaded`
makes a fresh `LoadedModel` at every call, so the scorer reads the weights as they are
now (a bf16 model's float32 head copy, `lleval.backends.hf.logits.float32_projection`, is made
again from the current head). What it accepts and what it refuses (one `ModelLoadError`
line each, the module untouched):

- a ``torch.nn.Module`` whose forward, given ``input_ids``, returns logits ``(B, T, V)``
  (a transformers causal LM's output ``.logits``, or the tensor itself). A wrapper is
  looked through: DDP and DataParallel (``.module``), ``torch.compile`` (``._orig_mod``).
  FSDP is not unwrapped (its forward gathers the sharded weights, a collective every rank
  must join), so under FSDP every rank scores every batch (`LiveModel.sharded`);
- causal: two inputs that differ only in their last token must give the same logits
  before it (a masked LM sees the future and is refused);
- a tokenizer no larger than the model's output (a token id with no logit is refused);
- weights in memory on one device (or placed by accelerate's device map): a parameter on
  the ``meta`` device (an empty init, weights offloaded) holds no numbers, and parameters
  spread over devices with no map to move the data between them would fail mid-batch.

The probe that checks the first two runs two 4-token inputs under ``torch.no_grad`` in
eval mode, restored afterwards (`lleval.commands.evaluator` keeps the training's state).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator

from lleval.backends.base import LoadedModel, ModelInfo, slice_positions
from lleval.errors import ModelLoadError

#: ids the causal probe feeds (the last differs between its two rows)
PROBE = ((0, 1, 2, 3), (0, 1, 2, 1))


@dataclass(frozen=True)
class LiveModel:
    """A checked module in memory: what to call, its tokenizer and what the report says of it."""

    module: Any  # the model itself (wrappers looked through, FSDP kept)
    tokenizer: Any
    name: str
    vocab: int  # width of its logits
    device: Any  # torch.device its inputs go to
    sharded: bool  # FSDP: its forward is collective, every rank runs every batch
    hf: bool  # a transformers model (lleval's own slices: hidden states projected at scored positions)
    float32_head: bool = True

    @property
    def max_positions(self) -> int | None:
        """The longest input its config names, when it has one."""
        from lleval.backends.hf.pretrained import max_positions

        config = getattr(self.module, "config", None)
        return None if config is None else max_positions(config)

    def loaded(self) -> LoadedModel:
        """A `LoadedModel` over the weights as they are now, where they are now (a loop may have
        moved the model; cheap: no copy, but a bf16 model's float32 head)."""
        return dataclasses.replace(self, device=_device(self.module))._loaded()

    def _loaded(self) -> LoadedModel:
        from lleval.backends.hf import logits
        from lleval.backends.hf.placement import free_memory
        from lleval.engine.kernels import scorer_from_slices

        module, tokenizer = self.module, self.tokenizer
        if self.hf and not self.sharded:
            slices = logits.make_logits_slices(module, self.float32_head, inference=False)
            head = "float32" if self.float32_head and logits.is_half(module) and logits.has_plain_head(module) else None
            bytes_per_token = logits.activation_bytes_per_token(module)
        else:
            slices, head, bytes_per_token = self._forward_slices(), None, None
        parameters = list(module.parameters())
        info = ModelInfo(name=self.name, source="memory", revision=None, sha256=None,
                         dtype=str(parameters[0].dtype).removeprefix("torch."), device=str(self.device),
                         parameters=sum(p.numel() for p in parameters), max_positions=self.max_positions,
                         device_map=_placement(module), head_dtype=head)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        accelerator = self.device.type == "cuda"
        return LoadedModel(scorer_from_slices(slices, slice_positions(self.vocab)), tokenizer, info, int(pad or 0),
                           module, slices, self.vocab, bytes_per_token, accelerator=accelerator,
                           free_memory=free_memory(str(self.device)) if accelerator else None)

    def _forward_slices(self) -> Any:
        """Logits slices from the module's own forward (FSDP, or a module that is not a
        transformers model): ``(B, T, V)`` logits (only the scored positions where it takes
        ``logits_to_keep``), then the scored positions a slice at a time."""
        import inspect

        import torch

        module, device = self.module, self.device
        inner = getattr(module, "module", module)  # FSDP1's wrapped model names the arguments
        keeps = "logits_to_keep" in inspect.signature(inner.forward).parameters

        @torch.no_grad()
        def slices(input_ids: torch.Tensor, attention_mask: torch.Tensor, score_mask: torch.Tensor,
                   per_slice: int) -> Iterator[torch.Tensor]:
            mask = score_mask.to(device)
            if keeps:
                logits = logits_of(module(input_ids=input_ids.to(device), logits_to_keep=mask))  # (N, V)
            else:
                logits = logits_of(module(input_ids.to(device)))[mask]  # (N, V)
            logits = logits.reshape(-1, logits.shape[-1])
            for i in range(0, logits.shape[0], per_slice):
                yield logits[i : i + per_slice]

        return slices


def logits_of(output: Any) -> Any:
    """The logits a forward returned: its ``.logits``, or the tensor itself; None for anything else."""
    import torch

    logits = getattr(output, "logits", output)
    return logits if isinstance(logits, torch.Tensor) else None


def _placement(module: Any) -> dict[str, str] | None:
    placed = getattr(module, "hf_device_map", None)
    return {str(k): str(v) for k, v in placed.items()} if isinstance(placed, dict) and placed else None


def unwrap(model: Any) -> tuple[Any, bool]:
    """The module to call and whether it is sharded by FSDP (kept as it is: its forward
    gathers the weights). DDP, DataParallel and ``torch.compile`` wrappers are looked through."""
    import torch

    while True:
        if _is_fsdp(model):
            return model, True
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod
        else:
            return model, any(_is_fsdp(m) for m in model.modules())


def _is_fsdp(module: Any) -> bool:
    """FSDP1's wrapper or a module FSDP2's ``fully_shard`` has sharded."""
    try:
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    except ImportError:  # a torch built without distributed
        return False
    return isinstance(module, (FSDPModule, FullyShardedDataParallel))


def open_live(model: Any, tokenizer: Any, name: str | None = None, float32_head: bool = True) -> LiveModel:
    """Check a model in memory and its tokenizer (see the module's docstring); every refusal
    one `ModelLoadError` line."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(f"the evaluator's model is a {type(model).__name__}, not a torch.nn.Module: pass the "
                             "causal LM itself (a transformers AutoModelForCausalLM, or a module returning logits).")
    if tokenizer is None or not callable(getattr(tokenizer, "__call__", None)) or not hasattr(tokenizer, "__len__"):
        raise ModelLoadError(f"the evaluator's tokenizer is a {type(tokenizer).__name__}: pass the model's "
                             "transformers tokenizer (AutoTokenizer.from_pretrained(...)).")
    module, sharded = unwrap(model)
    device = _device(module)
    shown = name or _name(module)
    vocab = _probe(module, device, shown)
    if len(tokenizer) > vocab:
        raise ModelLoadError(
            f"the tokenizer has {len(tokenizer)} tokens and {shown} gives logits for {vocab}: ids from {vocab} up "
            "would have no log-prob. Pass the model's own tokenizer, or grow the model's embeddings to it "
            "(model.resize_token_embeddings(len(tokenizer))).")
    hf = hasattr(module, "get_output_embeddings") and hasattr(module, "base_model") and hasattr(module, "config")
    return LiveModel(module, tokenizer, shown, vocab, device, sharded, hf, float32_head)


def _name(module: Any) -> str:
    config = getattr(module, "config", None)
    path = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    return f"{path or type(module).__name__} (in memory)"


def _device(module: Any) -> Any:
    """The device its inputs go to; a model whose weights are not all in one device's memory is
    refused, unless accelerate's device map moves the data between them."""
    import torch

    devices = {p.device for p in module.parameters()}
    if not devices:
        raise ModelLoadError(f"{type(module).__name__} has no parameters: pass the causal LM itself.")
    if any(d.type == "meta" for d in devices):
        raise ModelLoadError("the model has weights on the meta device (built empty, or offloaded): they hold no "
                             "numbers to score with. Load or move the weights onto a device first (model.to('cpu'), "
                             "model.to('cuda')).")
    if len(devices) > 1 and _placement(module) is None:
        shown = ", ".join(sorted(str(d) for d in devices))
        raise ModelLoadError(f"the model's weights are on several devices ({shown}) with no device map to move the "
                             "data between them: move it onto one device (model.to(...)), or load it with device_map=.")
    first = next(module.parameters()).device
    if first.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"the model is on {first}, which this process cannot reach: move it to a device it sees.")
    return first


def _probe(module: Any, device: Any, name: str) -> int:
    """Run the two probe inputs once: the width of the logits, or a refusal of a model that
    gives none or that reads tokens after the one it predicts."""
    import torch

    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            ids = torch.tensor(PROBE, device=device)
            try:
                output = module(input_ids=ids)
            except TypeError:  # a module whose forward takes the ids by position only
                output = module(ids)
    except Exception as exc:
        from lleval.hub import first_line

        raise ModelLoadError(f"{name} failed on a 4-token input ({type(exc).__name__}: {first_line(exc)}): the "
                             "evaluator needs a causal LM whose forward takes input_ids.") from None
    finally:
        for m, mode in modes:
            m.training = mode
    logits = logits_of(output)
    if logits is None or logits.dim() != 3 or tuple(logits.shape[:2]) != (2, 4):
        raise ModelLoadError(f"{name} returned no logits (B, T, V) for input_ids (it gave a "
                             f"{type(output).__name__}): it is not a causal language model. Pass one with its LM "
                             "head (AutoModelForCausalLM), not its base model.")
    if not torch.allclose(logits[0, :3].float(), logits[1, :3].float(), rtol=1e-3, atol=1e-4, equal_nan=True):
        raise ModelLoadError(f"{name} is not causal: its logits at a position change with a later token (a masked "
                             "or bidirectional model). lleval scores causal language models.")
    return int(logits.shape[-1])


