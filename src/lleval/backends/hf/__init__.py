"""The Hugging Face / GGUF backend: a transformers causal LM and its tokenizer, from a
folder, a hub id or a ``.gguf`` file (converted once, kept in `lleval.backends.model_cache`).

Everything it loads is described in a `ModelInfo` that goes into the report; its
`LoadedModel` has logits slices, so it serves every capability (KL, rank, entropy).
One concern a module, in the order a load meets them:

- `locate`: where the model's files are (built-in default, ``.gguf``, folder, hub id);
- `placement`: the device and dtype policy;
- `cached`: the model cache's check and store for a ``.gguf`` file;
- `pretrained`: ``from_pretrained`` (the only caller), the tokenizer and config;
- `logits`: the logits-slice kernel and what the batch planner needs of the model;
- `backend`: `ModelSource`, `open_model`, `load_weights` and the registered `BACKEND`.

This face hands on the names that scripts and tests use. A name is patched where it is
looked up (``lleval.backends.hf.backend.load_weights``), not here. None of torch or
transformers is imported until a model is opened.
"""

from lleval.backends.hf.backend import BACKEND, MODEL_CODE, load, open_model
from lleval.backends.hf.locate import default_model_path
from lleval.backends.hf.logits import make_logits_slices, make_scorer, right_padded
from lleval.backends.hf.placement import resolve_dtype
from lleval.backends.hf.pretrained import load_tokenizer

__all__ = [
    "BACKEND", "MODEL_CODE", "default_model_path", "load", "load_tokenizer", "make_logits_slices", "make_scorer",
    "open_model", "resolve_dtype", "right_padded",
]
