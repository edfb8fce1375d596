"""What a checkpoint must have been made with, and the check of a resumed run against it.

A resumed run adds its numbers to the checkpoint's, so everything that decides a
number must be what it was:

- **the model, by what it does**: the log-probs of a fixed probe text, scored through
  the run's own scorer (one window, one batch: a forward pass of 32 tokens, or one
  request to a server), compared on resume (`PROBE_TOLERANCE`); a name, a folder or a
  URL can hold other weights by the time the run resumes. A local folder's weight
  files are recorded too (size and modification time, a ``stat`` each): once they have
  changed, the probe must come out exactly as it did;
- **every setting that changes a number**, as the `Setting` declarations classify them
  (`lleval.config.RESUME_SAME`), named in a refusal as the user gave it (flag or
  config-file key);
- what the settings resolve to: the model's description (its dtype, device, revision,
  hashes), the tokenizer's fingerprint, the protocol as planned, the scorer's columns.

The texts are checked by content as they are read (`lleval.runner.checkpoint.verify_resumed`).
"""

from __future__ import annotations

import json
import math
from typing import Any

from lleval.config import RESUME_SAME, EvalConfig, setting, settings
from lleval.errors import ConfigError

#: The probe: English prose, digits, punctuation and a non-ASCII character, so most of a
#: tokenizer's kinds of tokens are met; repeated to fill `PROBE_TOKENS` with any tokenizer.
PROBE_TEXT = ("The river begins as a spring in a boggy hollow high on the moor, and runs 47 miles to the sea. "
              "In 1847, 3.14 kilograms of apples cost £2; today (2024) they cost more!\n")
PROBE_TOKENS = 32  # log-probs the probe records (fewer when the run's windows are shorter)
#: Mean absolute difference of the probe's log-probs (nats) up to which a resumed model counts
#: as the one the checkpoint was made with. Measured on SmolLM2-135M, on an Intel Xeon
#: (Sapphire Rapids): one model and device give the probe bit for bit (a batch of one, the same
#: shape every time; so did 1 and 2 threads); batched with three other rows, float32
#: log-probs moved by 4.6e-6 on average (1.7e-5 at most), and the same weights in bfloat16
#: differ from float32 by 0.028 on average (0.13 at most; float16: 0.0045). So 1e-3 for a
#: model lleval runs in float32 (200 times the batching noise), and 1e-2 for half precision and
#: served models (a server batches the probe with other requests; its rounding noise is a
#: fraction of the whole bf16-versus-float32 gap, and a server restarted in another precision
#: is refused). Other weights move the probe by tenths of a nat or more (two random tiny
#: models: ~1 nat; a few fine-tuning steps may move it less: their files changed, which asks
#: for the probe exactly).
PROBE_TOLERANCE = {"float32": 1e-3, "other": 1e-2}


def make_fingerprint(config: EvalConfig, loaded: Any, protocol: Any, *, probe: bool = True) -> dict[str, Any]:
    """What decides every number of a run: hashing the tokenizer costs a pass over its
    vocabulary and the probe a forward pass, so this is computed only when a checkpoint is
    used (``probe`` false: a rank that neither reads nor writes it)."""
    from lleval.report.blocks import model_block, tokenizer_block

    model = {k: v for k, v in model_block(loaded.info).items() if k != "cache"}  # a cache hit is the same model
    if isinstance(model.get("server"), dict):  # replicas share the work, the probe checks the answers
        model["server"] = {k: v for k, v in model["server"].items() if k != "replicas"}
    return {
        "model": model,
        "tokenizer": tokenizer_block(loaded.tokenizer, loaded.info.name)["fingerprint"],
        "protocol": protocol.describe(loaded.tokenizer),
        "columns": list(getattr(loaded.scorer, "columns", ())),  # the token file's further columns
        "settings": settings_values(config),
        # --sample's rows and the --seed that drew them (--seed alone changes no stored number)
        "sample": None if config.sample is None else {"rows": config.sample, "seed": config.seed},
        "files": {name: [size, mtime] for name, size, mtime in getattr(loaded.info, "files", ())},
        "probe": probe_logprobs(loaded, protocol.max_length) if probe else None,
    }


def settings_values(config: EvalConfig) -> dict[str, Any]:
    """The value of every setting that changes a number (`RESUME_SAME`), as JSON gives it back."""
    return json.loads(json.dumps({f.name: getattr(config, f.name) for f, how in settings()
                                  if how.resume == RESUME_SAME}))


def probe_logprobs(loaded: Any, max_length: int) -> dict[str, Any]:
    """The log-probs the run's scorer gives the probe text's tokens (after the first), as one
    window of at most ``max_length`` input tokens in a batch of its own."""
    import torch

    from lleval.plan.tokenization import encode

    piece = encode(loaded.tokenizer, [PROBE_TEXT])[0]
    tokens = (piece * (1 + PROBE_TOKENS // max(1, len(piece))))[: min(PROBE_TOKENS, max(1, max_length)) + 1]
    n = len(tokens) - 1
    if n < 1:  # a tokenizer that gives the probe no token: nothing to compare
        return {"tokens": tokens, "logprobs": []}
    with torch.inference_mode():
        values = loaded.scorer(torch.tensor([tokens[:-1]]), torch.ones((1, n), dtype=torch.long),
                               torch.tensor([tokens[1:]]), torch.ones((1, n), dtype=torch.bool))
    values = values.detach().to(device="cpu", dtype=torch.float32)
    column = values[:, 0] if values.ndim == 2 else values
    return {"tokens": tokens, "logprobs": [float(v) for v in column.tolist()]}


def probe_tolerance(model: dict[str, Any]) -> float:
    """`PROBE_TOLERANCE` for a model block: float32 for a model lleval runs in float32 with a
    float32 head, else the looser one (half precision, a server)."""
    local32 = model.get("dtype") == "float32" and model.get("head_dtype") in (None, "float32")
    return PROBE_TOLERANCE["float32" if local32 and model.get("source") != "server" else "other"]


def check(saved: dict[str, Any], now: dict[str, Any], config: EvalConfig, path: str) -> None:
    """Refuse (`ConfigError`) resuming the checkpoint at ``path`` (its fingerprint ``saved``) with
    this run (``now``): the settings that differ, by name; then a model, tokenizer, protocol or
    set of columns that differs as resolved; then a model that answers the probe otherwise."""
    changed = [name for name in sorted(set(saved["settings"]) | set(now["settings"]))
               if saved["settings"].get(name) != now["settings"].get(name)]
    if changed:
        made = " and ".join(_made_with(name, saved["settings"].get(name), config, now["settings"].get(name))
                            for name in changed)
        raise ConfigError(f"checkpoint {path} was made with {made}: a resumed run must have the settings it was "
                          "made with. Rerun it as it was made, delete it, or pass another --checkpoint.")
    names = {"columns": "set of per-token columns", "sample": "random sample of rows (--sample, --seed)"}
    differs = [names.get(part, part) for part in ("model", "tokenizer", "protocol", "columns", "sample")
               if saved.get(part) != now.get(part)]
    if differs:
        raise ConfigError(
            f"checkpoint {path} was made with a different {' and '.join(differs)}: it cannot be resumed "
            "with this command. Rerun it as it was made, delete it, or pass another --checkpoint."
        )
    if now.get("probe") is not None:
        _check_probe(saved, now, path)


def _made_with(name: str, old: Any, config: EvalConfig, new: Any) -> str:
    """``--min-k 0.2 (this run: --min-k 0.5)``: the checkpoint's value by its flag, and this
    run's as the user gave it (flag, or config-file key)."""
    return f"{_flag_form(name, old)} (this run: {_current_form(name, new, config)})"


def _flag_form(name: str, value: Any) -> str:
    flag = f"--{name.replace('_', '-')}"
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    if value is None or value == []:
        return f"no {flag}"
    return f"{flag} {' '.join(map(_shown, value)) if isinstance(value, list) else _shown(value)}"


def _shown(value: Any) -> str:
    """A value as a message shows it on one line: quoted where it holds spaces or controls
    (``--concat "\\n\\n"``)."""
    text = str(value)
    return text if text.isprintable() and " " not in text and text else json.dumps(text)


def _current_form(name: str, value: Any, config: EvalConfig) -> str:
    from lleval.config import config_file_of

    if config_file_of(config.origins, name) is not None:
        shown = json.dumps(value) if isinstance(value, (bool, list)) or value is None else _shown(value)
        return setting(config.origins, name, shown)
    return _flag_form(name, value)


def _check_probe(saved: dict[str, Any], now: dict[str, Any], path: str) -> None:
    """The probe's log-probs within `probe_tolerance` of the checkpoint's, and exactly equal
    when the model folder's files changed since (a copy of other weights keeps the sizes)."""
    old, new = saved.get("probe") or {}, now["probe"]
    files = _changed_files(saved.get("files") or {}, now.get("files") or {})
    tolerance = 0.0 if files else probe_tolerance(now["model"])
    if old.get("tokens") == new["tokens"] and len(old.get("logprobs", ())) == len(new["logprobs"]):
        gaps = [abs(a - b) for a, b in zip(old["logprobs"], new["logprobs"])]
        mean = sum(gaps) / max(1, len(gaps))
        if mean <= tolerance and all(math.isfinite(g) for g in gaps):
            return
        what = (f"its log-probs of a fixed probe text ({len(gaps)} tokens) differ from the checkpoint's by "
                f"{mean:.3g} nats on average (the same model stays within {tolerance:g})")
    else:
        what = "it scores a fixed probe text on other tokens than the checkpoint recorded"
    since = f"; {files} since the checkpoint was saved" if files else ""
    raise ConfigError(
        f"checkpoint {path} was made with a model that answered otherwise: {what}{since}. These are not the "
        "weights it was made with (or the server behind the URL now serves others): resume with those weights, "
        "delete the checkpoint, or pass another --checkpoint."
    )


def _changed_files(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``model.safetensors changed`` (size or modification time), files added or gone; '' if none."""
    changed = sorted(name for name in set(old) & set(new) if old[name] != new[name])
    added, gone = sorted(set(new) - set(old)), sorted(set(old) - set(new))
    parts = ([f"{', '.join(changed)} changed"] if changed else []) + (
        [f"{', '.join(added)} appeared"] if added else []) + ([f"{', '.join(gone)} went"] if gone else [])
    return "; ".join(parts)
