"""Model and tokenizer loading for the in-process engines, with actionable errors.

A name is a local directory or a Hugging Face Hub id. Anything that stops a Hub model from
loading (not downloaded while offline, gated without a token, 401/404, hub unreachable) is
re-raised as `ModelLoadError` with a message that says what to do next.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> the first CUDA GPU if there is one, else CPU; anything else as given."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"`` -> bfloat16 on a GPU that supports it, float16 on other GPUs, float32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16") from None


def _load_error(name_or_path: str, what: str, exc: BaseException) -> ModelLoadError:
    if Path(name_or_path).is_dir():
        return ModelLoadError(f"could not load the {what} from local directory {name_or_path!r}: {exc}")
    return ModelLoadError(
        f"could not load the {what} {name_or_path!r} from the Hugging Face Hub or its local cache: "
        f"{type(exc).__name__}: {str(exc).strip().rstrip('.')}. If the model is gated "
        "(e.g. google/gemma-2-2b-it), accept its license on the Hub and set HF_TOKEN to a token "
        "with access; if this machine is offline, download the model beforehand "
        "(HF_HUB_OFFLINE=1 uses only the cache) or pass a local directory. To try the server "
        "without any download, run it with --demo (tiny offline demo models)."
    )


def _hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    # OSError covers transformers' "not a local folder and not a valid model id",
    # LocalEntryNotFoundError (offline, not cached) and network failures.
    return (OSError, HfHubHTTPError, HFValidationError)


def load_tokenizer(name_or_path: str | Path, **kwargs: Any) -> Any:
    """Load a (fast) tokenizer with `transformers.AutoTokenizer`; raises `ModelLoadError`."""
    from transformers import AutoTokenizer

    name = str(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(name, **kwargs)
    except _hub_errors() as exc:
        raise _load_error(name, "tokenizer", exc) from exc


def load_causal_lm(
    name_or_path: str | Path,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    **kwargs: Any,
) -> Any:
    """Load a causal LM with `AutoModelForCausalLM`, move it to ``device``, set eval mode.

    ``device``/``dtype`` accept ``"auto"`` (see `resolve_device`/`resolve_dtype`). Extra
    keyword arguments go to ``from_pretrained``. Raises `ModelLoadError` on load failures.
    """
    from transformers import AutoModelForCausalLM

    name = str(name_or_path)
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype, **kwargs)
    except _hub_errors() as exc:
        raise _load_error(name, "model", exc) from exc
    return model.to(target).eval()
