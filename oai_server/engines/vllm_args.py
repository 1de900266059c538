"""vLLM's arguments from ours, as plain keyword dicts: a request's `SamplingParams` (`sampling_kwargs`), and an
engine's `EngineSpec` (`EngineSpec.engine_kwargs`). Only `vllm_sampling_params` imports vLLM, when called, so this
module imports without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from oai_server.engines.base import SamplingParams


def sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """Map our `SamplingParams` onto ``vllm.SamplingParams`` keyword arguments (plain values).

    ``output_kind`` (a vLLM enum) is added by the factory. ``top_k=0`` means "disabled" in both
    (vLLM 0.26.0 documents 0 as the preferred disabled value and tolerates -1).
    """
    kwargs: dict[str, Any] = {
        "n": 1,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": max(params.top_k, 0),
        "repetition_penalty": params.repetition_penalty,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "seed": params.seed,
        "stop_token_ids": list(params.stop_token_ids),
        "min_tokens": params.min_tokens,
        "detokenize": False,
        "skip_special_tokens": False,
    }
    if params.orpheus_audio_slots:
        from oai_server.engines.band_sampling import TEMPERATURE_KEY, TOP_K_KEY, TOP_P_KEY
        from oai_server.engines.sampling import GREEDY_BELOW
        from oai_server.engines.vllm_orpheus_logits import EXTRA_ARGS_KEY, MIN_TOKENS_KEY, PENALTY_KEY

        # The slot processor applies the repetition penalty incrementally; vLLM's own would rebuild
        # every request's whole output history on the host at every step. It holds the end of speech
        # back too (`MIN_TOKENS_KEY`), where vLLM's min_tokens would rebuild tensors at every batch change.
        extra: dict[str, Any] = {
            EXTRA_ARGS_KEY: True,
            PENALTY_KEY: params.repetition_penalty,
            MIN_TOKENS_KEY: params.min_tokens,
        }
        kwargs["repetition_penalty"], kwargs["min_tokens"] = 1.0, 0
        if params.orpheus_band_sampling:  # filter (and draw) over the 4097 ids that can be emitted, not 156 940
            extra |= {TOP_P_KEY: params.top_p, TOP_K_KEY: max(params.top_k, 0)}
            kwargs["top_p"], kwargs["top_k"] = 1.0, 0
            # the draw too when asked for (seeded requests keep vLLM's generators)
            if params.orpheus_band_draw and params.seed is None and params.temperature >= GREEDY_BELOW:
                extra[TEMPERATURE_KEY] = params.temperature
                kwargs["temperature"] = 0.0  # vLLM's greedy path takes the one id the processor left
        kwargs["extra_args"] = extra
    return kwargs


def vllm_sampling_params(kwargs: dict[str, Any]) -> Any:
    """Default factory: ``vllm.SamplingParams(**kwargs, output_kind=RequestOutputKind.DELTA, skip_clone=True)``.

    Each request gets its own params object, so vLLM may take it as is: without ``skip_clone`` its input
    processing deep-copies the params of every request on the event loop.
    """
    from vllm import SamplingParams as VllmSamplingParams
    from vllm.sampling_params import RequestOutputKind

    return VllmSamplingParams(**kwargs, output_kind=RequestOutputKind.DELTA, skip_clone=True)


@dataclass(frozen=True)
class EngineSpec:
    """What one vLLM engine is asked to be: its model and vLLM's engine arguments as we set them (`engine_kwargs`),
    and with ``orpheus_slots`` the Orpheus slot processor (`OrpheusSlotLogitsProcessor`) and what it hosts: SNAC's
    service under ``snac_service`` (`oai_server.codec.snac_service`), below the engine's own work with
    ``snac_low_priority``, its rounds answered by the engine's steps with ``snac_rounds="step"``; the engine process's
    GIL switch interval unless ``switch_interval_ms`` is 0; its band work as CUDA graphs with ``band_graphs``."""

    model: str
    tokenizer: str | None
    max_model_len: int
    gpu_memory_utilization: float
    dtype: str = "auto"
    enforce_eager: bool = False
    max_num_seqs: int | None = None
    stream_interval: int = 1
    kv_cache_dtype: str = "auto"
    quantization: str | None = None
    enable_prefix_caching: bool = True
    orpheus_slots: bool = False
    snac_service: str | None = None
    snac_low_priority: bool = False
    snac_rounds: str = "thread"
    switch_interval_ms: float = 0.0
    band_graphs: bool = False
    log_stats: bool = False
    cudagraph_mode: str = "auto"

    def engine_kwargs(self) -> dict[str, Any]:
        """``AsyncEngineArgs`` keyword arguments (plain values plus the processor class).

        Without ``log_stats`` vLLM keeps no per-step statistics (``disable_log_stats``): its output handler
        would otherwise update them for every token of every request on the server's event loop. A
        ``cudagraph_mode`` other than "auto" goes to vLLM's ``compilation_config`` (its ``CUDAGraphMode``, upper
        case).
        """
        kwargs: dict[str, Any] = {
            "model": self.model,
            "tokenizer": self.tokenizer,
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "enforce_eager": self.enforce_eager,
            "kv_cache_dtype": self.kv_cache_dtype,
            "quantization": self.quantization,
            "enable_prefix_caching": self.enable_prefix_caching,
            "disable_log_stats": not self.log_stats,
        }
        if self.max_num_seqs is not None:
            kwargs["max_num_seqs"] = self.max_num_seqs
        if self.cudagraph_mode != "auto":
            kwargs["compilation_config"] = {"cudagraph_mode": self.cudagraph_mode.upper()}
        if self.stream_interval != 1:  # a request's tokens every `stream_interval` steps (and its first at once)
            kwargs["stream_interval"] = self.stream_interval
        if self.orpheus_slots:
            from oai_server.engines.vllm_orpheus_logits import OrpheusSlotLogitsProcessor

            kwargs["logits_processors"] = [OrpheusSlotLogitsProcessor]
            if config := self._processor_config():
                kwargs["additional_config"] = config
        return kwargs

    def _processor_config(self) -> dict[str, Any]:
        """What the slot processor reads from vLLM's ``additional_config`` in the engine's process."""
        config: dict[str, Any] = {}
        if self.snac_service:  # the processor starts the SNAC service in the engine's process
            from oai_server.codec.snac_service import LOW_PRIORITY_KEY, ROUNDS_KEY, SERVICE_KEY

            config.update({SERVICE_KEY: self.snac_service, LOW_PRIORITY_KEY: self.snac_low_priority})
            if self.snac_rounds != "thread":
                config[ROUNDS_KEY] = self.snac_rounds
        if self.switch_interval_ms:  # the engine process's GIL switch interval, set by the processor there
            from oai_server.codec.snac_service import SWITCH_INTERVAL_KEY

            config[SWITCH_INTERVAL_KEY] = self.switch_interval_ms / 1000
        if self.band_graphs:
            from oai_server.engines.band_graphs import BAND_GRAPHS_KEY

            config[BAND_GRAPHS_KEY] = True
        return config
