"""The transformers backend itself: a model opened (located, tokenizer and config loaded,
device and dtype chosen, its cache entry checked) and then loaded (weights on the device,
the logits-slice scorer built, the `ModelInfo` the report shows).

Opening is cheap and comes first, so every flag that needs the tokenizer or the model's
length is checked before the slow part; `load_weights` is the slow part. The steps each
live in their own module of this package; this one puts them in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lleval.backends.base import LoadedModel, ModelInfo, ModelSpec, slice_positions
from lleval.backends.hf.cached import cached_conversion, damage_notes, store_notes
from lleval.backends.hf.locate import locate, weight_files
from lleval.backends.hf.logits import (
    activation_bytes_per_token, has_plain_head, is_half, make_logits_slices, vocab_size,
)
from lleval.backends.hf.placement import cast_parameters, device_name, free_memory, resolve_device, resolve_dtype
from lleval.backends.hf.pretrained import from_pretrained, max_positions, tokenizer_and_config
from lleval.errors import ModelLoadError
from lleval.hub import is_url


@dataclass(frozen=True)
class ModelSource:
    """A model located, with its tokenizer and config loaded but not its weights: enough to
    check every flag that needs the tokenizer before the slow part of loading."""

    spec: ModelSpec
    location: str  # folder or hub id (for a cached .gguf: the cache entry's folder)
    gguf_file: str | None  # None once a .gguf is read from the cache
    source: str  # builtin | gguf | local | hub
    display: str
    tokenizer: Any
    config: Any
    device: str
    dtype: Any  # torch dtype
    sha256: str | None = None  # of the .gguf file
    cache: Any = None  # its lleval.backends.model_cache.CacheEntry, when the cache is on
    cache_status: str | None = None  # hit | miss | off (.gguf only)
    notes: tuple[str, ...] = ()  # what the cache met (a damaged entry), for the report's notes

    @property
    def name(self) -> str:
        """The model's display name."""
        return self.display

    @property
    def max_positions(self) -> int | None:
        """The longest input the model was built for, when its config says."""
        return max_positions(self.config)

    def load(self) -> LoadedModel:
        """Its weights, on its device, and its scorer (`load_weights`)."""
        return load_weights(self)


class HFBackend:
    """The transformers backend: any local folder, ``.gguf`` file or hub id (not a URL)."""

    name = "transformers"

    def claims(self, spec: ModelSpec) -> bool:
        return spec.name is None or not is_url(spec.name)

    def open(self, spec: ModelSpec) -> ModelSource:
        return open_model(spec)


BACKEND = HFBackend()


# transformers' code that every causal LM's load imports, whatever its architecture: the
# auto classes, the loading code (``modeling_utils``: ``torch.distributed.tensor`` and sympy)
# and the causal masks (``masking_utils``: ``torch._dynamo``); 1.1-1.3 s of a 1.4-1.6 s warm load on a Zen 5
MODEL_CODE = ("transformers.models.auto.modeling_auto", "transformers.models.auto.tokenization_auto",
              "transformers.modeling_utils", "transformers.masking_utils")


def open_model(spec: ModelSpec) -> ModelSource:
    """Locate the model and load its tokenizer and config; refuse what is not a causal LM."""
    from lleval.imports import import_frozen

    location, gguf_file, source, display = locate(spec)
    import_frozen(*MODEL_CODE)  # with the garbage collector paused, before any model object exists
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    sha, check, status = cached_conversion(spec, location, gguf_file, dtype)
    if check is not None and status == "checking":
        tokenizer, config = tokenizer_and_config(str(check.entry.folder), None, source, spec, display)
        status = "hit" if check.passed() else "miss"
    if check is not None and status == "hit":
        location, gguf_file = str(check.entry.folder), None
    else:
        tokenizer, config = tokenizer_and_config(location, gguf_file, source, spec, display)
    is_causal = config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not getattr(
        config, "is_encoder_decoder", False
    )
    if not is_causal and not spec.trust_remote_code:
        raise ModelLoadError(
            f"{display} is a {config.model_type!r} model, which is not a causal language model: "
            "lleval scores decoder-only LMs (AutoModelForCausalLM), such as Llama, GPT-2 or Qwen."
        )
    entry = None if check is None else check.entry
    return ModelSource(spec, location, gguf_file, source, display, tokenizer, config, device, dtype, sha, entry, status,
                       damage_notes(check, display))


def load_weights(found: ModelSource) -> LoadedModel:
    """Load the weights of an opened model onto its device, and build its scorer."""
    spec, device = found.spec, found.device
    model, cache_status, store_notes = _load_model(found)
    placement: dict[str, Any] | None = None
    if spec.device_map:
        # accelerate's placement; transformers leaves hf_device_map unset when one device holds it all
        placement = getattr(model, "hf_device_map", None) or {"": str(next(model.parameters()).device)}
        device = ",".join(sorted({device_name(d) for d in placement.values()}))
    else:
        model.to(device)
    model.eval()
    info = ModelInfo(
        name=found.display,
        source=found.source,
        revision=getattr(model.config, "_commit_hash", None) or spec.revision if found.source == "hub" else None,
        sha256=found.sha256,
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        device=device,
        parameters=sum(p.numel() for p in model.parameters()),
        max_positions=max_positions(model.config),
        device_map={str(k): str(v) for k, v in placement.items()} if placement else None,
        cache=cache_status,
        head_dtype="float32" if spec.float32_head and is_half(model) and has_plain_head(model) else None,
        notes=found.notes + store_notes,
        files=weight_files(Path(found.location)) if found.source == "local" else (),
    )
    tokenizer = found.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    slices = make_logits_slices(model, spec.float32_head)
    vocab = vocab_size(model)
    from lleval.engine.kernels import scorer_from_slices

    return LoadedModel(scorer_from_slices(slices, slice_positions(vocab)), tokenizer, info, int(pad or 0), model,
                       slices, vocab, activation_bytes_per_token(model), accelerator=device.startswith("cuda"),
                       free_memory=free_memory(device) if device.startswith("cuda") else None)


def _load_model(found: ModelSource) -> tuple[Any, str | None, tuple[str, ...]]:
    """The transformers model of an opened model, its cache status and the notes of a
    cache that could not be written (`lleval.backends.hf.cached.store_notes`).

    A .gguf file missing from the cache is converted in float32 and stored so
    (one entry per file, whatever the dtype). A bf16/fp16 run then loads that
    entry in its dtype, as every later run does on a hit (transformers casts
    the float32 safetensors), so its numbers are those of later runs, and the
    file is converted once, not once per dtype (SmolLM2: 260 MB more and a
    minute on a 2-core Zen 3 for a bf16 entry). Where the entry
    cannot be written, the float32 model is cast in memory (`lleval.backends.hf.placement.cast_parameters`).
    """
    import torch
    from transformers import AutoModelForCausalLM

    spec = found.spec
    device_map = {"device_map": spec.device_map} if spec.device_map else {}
    convert_float32 = found.cache_status == "miss" and found.dtype != torch.float32

    def weights(location: str, gguf_file: str | None, dtype: Any) -> Any:
        return from_pretrained(AutoModelForCausalLM, f"model {found.display}", location, gguf_file, found.source,
                               spec, dtype=dtype, **device_map)

    model = weights(found.location, found.gguf_file, torch.float32 if convert_float32 else found.dtype)
    if found.cache_status != "miss":
        return model, found.cache_status, ()
    status, notes = store_notes(found.cache, model, found.tokenizer, found.display)
    if status == "miss":
        return (cast_parameters(model, found.dtype) if convert_float32 else model), "miss", notes
    if convert_float32:
        del model  # the float32 copy goes before the half one loads
        model = weights(str(found.cache.folder), None, found.dtype)
    return model, "stored", ()


def load(spec: ModelSpec) -> LoadedModel:
    """`open_model` then `load_weights`: every failure is a `ModelLoadError` saying what to do."""
    return load_weights(open_model(spec))
