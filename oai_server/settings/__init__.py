"""Server settings, from the environment (`OAI_SERVER_*` or the seed's names) and the CLI.

Every field reads `OAI_SERVER_<FIELD>`; the fields the seed system had also read the seed's
own variable (LLM_MODEL_NAME, TTS_GPU_MEMORY_UTILIZATION, PORT, SNAC_DEVICE, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .env import env_aliases
from .speech import DEFAULT_VOICES, RealtimeSettings, SpeechInputSettings, SpeechOutputSettings

__all__ = ["DEFAULT_SYSTEM_PROMPT", "DEFAULT_VOICES", "Settings"]

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant. Your replies are spoken aloud, so answer in short, "
    "natural spoken sentences. Never use markdown, lists, headings, code, emoji or URLs. "
    "Keep answers brief unless asked for detail."
)


class ServingSettings(BaseSettings):
    """The server itself, and the chat model (Gemma)."""

    model_config = SettingsConfigDict(use_attribute_docstrings=True)

    # --- serving ---
    host: str = Field("0.0.0.0", validation_alias=env_aliases("host"))
    """Address to bind."""
    port: int = Field(8080, ge=0, le=65535, validation_alias=env_aliases("port", "PORT"))
    """Port to bind (seed: PORT)."""
    demo: bool = Field(False, validation_alias=env_aliases("demo"))
    """Offline demo profile: tiny random-weight models generated on first use, CPU only."""
    cache_dir: Path = Field(Path.home() / ".cache" / "oai-server", validation_alias=env_aliases("cache_dir"))
    """Where the demo profile writes its generated models."""
    engine: Literal["auto", "vllm", "transformers", "remote"] = Field("auto", validation_alias=env_aliases("engine"))
    """Engine backend: vllm when installed with CUDA, else transformers (auto); or remote servers."""
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", validation_alias=env_aliases("log_level")
    )
    """Log level (debug, info, warning, error, critical); debug also prints tracebacks of start-up failures."""
    strict_model_names: bool = Field(False, validation_alias=env_aliases("strict_model_names"))
    """Answer unknown model ids with 404 model_not_found; without it chat serves any unknown id with the
    chat model and speech with Orpheus."""

    # --- LLM (Gemma) ---
    llm_model_name: str = Field(
        "google/gemma-2-2b-it", validation_alias=env_aliases("llm_model_name", "LLM_MODEL_NAME")
    )
    """Chat model id or local path (seed: LLM_MODEL_NAME)."""
    llm_served_name: str | None = Field(None, validation_alias=env_aliases("llm_served_name"))
    """Model id reported by /v1/models for chat (default: llm_model_name)."""
    llm_max_model_len: int = Field(2048, ge=64, validation_alias=env_aliases("llm_max_model_len", "LLM_MAX_MODEL_LEN"))
    """Context length of the chat model; prompts are trimmed to fit (seed: LLM_MAX_MODEL_LEN)."""
    llm_gpu_memory_utilization: float = Field(
        0.25, gt=0, le=1, validation_alias=env_aliases("llm_gpu_memory_utilization", "LLM_GPU_MEMORY_UTILIZATION")
    )
    """GPU memory share of the chat engine on vLLM (seed: LLM_GPU_MEMORY_UTILIZATION)."""
    llm_max_num_seqs: int = Field(256, ge=1, validation_alias=env_aliases("llm_max_num_seqs"))
    """vLLM max_num_seqs for the chat engine (as many as --max-concurrent-streams, as for Orpheus)."""
    llm_stream_interval: int = Field(1, ge=1, le=64, validation_alias=env_aliases("llm_stream_interval"))
    """vLLM stream_interval of the Gemma engine: tokens per text delta (more: less host work per token, text
    later by up to that many steps)."""
    llm_max_tokens: int = Field(512, ge=1, validation_alias=env_aliases("llm_max_tokens"))
    """Default and upper bound of max_tokens for chat replies."""
    llm_remote_url: str | None = Field(None, validation_alias=env_aliases("llm_remote_url"))
    """Base URL of a remote OpenAI-compatible server for the chat model (engine=remote)."""
    llm_remote_model: str | None = Field(None, validation_alias=env_aliases("llm_remote_model"))
    """Model name the remote chat server serves (default: llm_model_name)."""
    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, validation_alias=env_aliases("system_prompt"))
    """Voice-style system prompt prepended to every conversation ('' disables)."""


class EngineSettings(BaseSettings):
    """Where the engines run (one GPU or several), how vLLM runs them, and where chat audio is kept."""

    model_config = SettingsConfigDict(use_attribute_docstrings=True)

    # --- placement (several GPUs; defaults keep one-GPU behaviour) ---
    llm_gpus: str | None = Field(None, validation_alias=env_aliases("llm_gpus"))
    """GPU indices of the chat engine, e.g. "0" (vLLM; default: all visible, shared)."""
    tts_gpus: str | None = Field(None, validation_alias=env_aliases("tts_gpus"))
    """GPU indices of the Orpheus engine, e.g. "1" or "1,2,3,4" (tensor x data parallel cards)."""
    llm_tensor_parallel_size: int = Field(1, ge=1, validation_alias=env_aliases("llm_tensor_parallel_size"))
    """Tensor-parallel GPUs of the chat engine."""
    tts_tensor_parallel_size: int = Field(1, ge=1, validation_alias=env_aliases("tts_tensor_parallel_size"))
    """Tensor-parallel GPUs of each Orpheus replica."""
    tts_data_parallel_size: int = Field(1, ge=1, validation_alias=env_aliases("tts_data_parallel_size"))
    """Data-parallel Orpheus replicas (vLLM balances requests across them)."""
    asr_gpus: str | None = Field(None, validation_alias=env_aliases("asr_gpus"))
    """GPU index of the speech-recognition engine, e.g. "0" (vLLM; default: all visible, shared)."""

    # --- chat audio ---
    audio_ttl_seconds: int = Field(3600, ge=1, validation_alias=env_aliases("audio_ttl_seconds"))
    """How long an audio id from a reply can be referred to in later turns (expires_at)."""
    audio_cache_size: int = Field(10000, ge=1, validation_alias=env_aliases("audio_cache_size"))
    """Most audio ids kept (oldest dropped first)."""
    first_segment_words: int = Field(4, ge=0, validation_alias=env_aliases("first_segment_words"))
    """The first spoken segment may be cut at a clause once it has this many words (0 disables)."""
    first_segment_max_words: int = Field(10, ge=0, validation_alias=env_aliases("first_segment_max_words"))
    """The first spoken segment holds at most this many words, cut even without punctuation (0 disables)."""

    # --- engines (vLLM) ---
    dtype: str = Field("auto", validation_alias=env_aliases("dtype"))
    """Model dtype (auto, bfloat16, float16, float32)."""
    enforce_eager: bool = Field(False, validation_alias=env_aliases("enforce_eager"))
    """vLLM: disable CUDA graphs (faster start, slower decode)."""
    engine_log_stats: bool = Field(False, validation_alias=env_aliases("engine_log_stats"))
    """vLLM: keep each engine's per-step statistics and its periodic throughput log line. Off by default:
    they are computed for every token of every stream on the server's event loop (about a sixth of its busy
    time at 288 streams on two H200s), and /metrics has this server's own figures."""
    tts_kv_cache_dtype: str = Field("auto", validation_alias=env_aliases("tts_kv_cache_dtype"))
    """vLLM KV-cache dtype for Orpheus (auto or fp8)."""
    tts_quantization: str | None = Field(None, validation_alias=env_aliases("tts_quantization"))
    """vLLM weight quantization for Orpheus (e.g. fp8)."""
    tts_band_graphs: bool = Field(True, validation_alias=env_aliases("tts_band_graphs"))
    """vLLM: run the Orpheus slot processor's band work (penalty, top-p) of a step as one CUDA graph replay instead
    of ~15 kernel launches from the engine core's host-bound thread, every batch size's graph captured in the
    warm-up (an H200: +10 % tokens/s at 128 streams in process, speech capacity 192 through HTTP against 144)."""
    tts_frame_deltas: bool = Field(True, validation_alias=env_aliases("tts_frame_deltas"))
    """vLLM: hold Orpheus's lone first-token delta until a whole frame, so each frame reaches the server the step it
    is sampled, not one step later (with a --tts-stream-interval of whole frames; off: vLLM's own rule)."""
    tts_cudagraph_mode: Literal["auto", "full", "full_and_piecewise", "full_decode_only", "piecewise", "none"] = Field(
        "auto", validation_alias=env_aliases("tts_cudagraph_mode")
    )
    """vLLM's CUDA graph mode for Orpheus. auto: vLLM's, full graphs for steps of decodes alone, piecewise ones (the
    attention launched from Python layer by layer) for steps with a prompt in them; full: full graphs for those too
    (FlashAttention 3 allows it). On an H200 it bought nothing in process with streams coming and going (session 29:
    12 628 against 12 323 tokens/s at 128 streams, within one machine's run-to-run spread)."""
    tts_arrival_window_ms: float = Field(30.0, ge=0.0, le=200.0, validation_alias=env_aliases("tts_arrival_window_ms"))
    """vLLM: while 16 or more Orpheus streams generate, a new one waits up to this long to enter the engine with
    every other that arrives meanwhile, so their prompts share one step (a step with a prompt in it costs vLLM's
    host more than one of decodes alone). 0: each enters at once. On an H200 at 128 streams coming and going, 30
    cut what each new stream cost our pipeline from ~12.5 to ~1.7 ms of engine time (session 30)."""
    tts_engine_switch_interval_ms: float = Field(
        0.0, ge=0.0, le=100.0, validation_alias=env_aliases("tts_engine_switch_interval_ms")
    )
    """vLLM: the GIL switch interval of the Orpheus engine's process, in ms (0: Python's, 5 ms). SNAC's service thread
    there wakes for every worker round and may wait this long for the GIL while the engine's scheduler holds it. On
    an H200 at 192 streams in process, a round trip a round to that thread, no SNAC work, cost the engine 30 % of
    its steady tokens/s at 5 ms and 1 % at 0.5 (session 33, one engine each, whose spread is 16-19 %). As an A/B on
    one engine while streams came and went (session 34) 0.5 ms changed ours by -5 to +8 %, within the drift of the
    measurement itself: it stays off (bench/README.md)."""
    tts_prefix_caching: bool = Field(False, validation_alias=env_aliases("tts_prefix_caching"))
    """vLLM prefix caching for Orpheus. Off by default: no stream reuses another's audio, and hashing every block
    of it costs the engine core's host thread (an H200 at 256 streams: +18 % tokens/s without it)."""
    warmup_batch_sizes: Annotated[list[int], NoDecode] = Field(
        [1, 2, 4, 8, 16, 32, 64, 128], validation_alias=env_aliases("warmup_batch_sizes")
    )
    """Batch sizes of the sampled warm-up requests run before readiness (empty disables)."""
    device: str = Field("auto", validation_alias=env_aliases("device"))
    """Device of the transformers engines: auto, cpu, cuda."""
    max_concurrency: int = Field(8, ge=1, validation_alias=env_aliases("max_concurrency"))
    """Requests generating at once in each transformers engine."""


class LimitSettings(BaseSettings):
    """Limits, security, and what hostile clients may hold of the connections and the process."""

    model_config = SettingsConfigDict(use_attribute_docstrings=True)

    # --- limits and security ---
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, validation_alias=env_aliases("api_keys")
    )
    """Accepted API keys (comma-separated in OAI_SERVER_API_KEYS); empty disables auth."""
    api_key_file: Path | None = Field(None, validation_alias=env_aliases("api_key_file"))
    """File with one API key per line."""
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=env_aliases("cors_origins")
    )
    """Origins allowed by CORS (comma-separated; '*' for any)."""
    max_input_chars: int = Field(4096, ge=1, validation_alias=env_aliases("max_input_chars"))
    """Longest speech input and longest single chat message (also the seed routes' `prompt` and `message`)."""
    max_messages: int = Field(256, ge=1, validation_alias=env_aliases("max_messages"))
    """Most messages in one chat request."""
    max_concurrent_streams: int = Field(256, ge=1, validation_alias=env_aliases("max_concurrent_streams"))
    """Requests served at once; more wait in the queue."""
    max_queued: int = Field(512, ge=0, validation_alias=env_aliases("max_queued"))
    """Requests waiting for a slot; past this the answer is 429."""
    queue_timeout_seconds: float = Field(10.0, gt=0, validation_alias=env_aliases("queue_timeout_seconds"))
    """Longest wait in the queue before a 429."""
    request_timeout_seconds: float = Field(300.0, gt=0, validation_alias=env_aliases("request_timeout_seconds"))
    """Deadline of one request; a stuck engine request is cancelled after it."""
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, validation_alias=env_aliases("max_body_bytes"))
    """Largest request body accepted (413 past it)."""
    shutdown_drain_seconds: float = Field(20.0, ge=0, validation_alias=env_aliases("shutdown_drain_seconds"))
    """On SIGTERM, how long in-flight streams may finish before they are aborted."""
    redis_url: str | None = Field(None, validation_alias=env_aliases("redis_url"))
    """Redis URL for the shared audio-id cache (scale-out); in-memory when unset."""
    audio_store_path: Path | None = Field(None, validation_alias=env_aliases("audio_store_path"))
    """SQLite file of audio ids shared by the server processes of one host (--placement replicated makes one for
    its replicas when --redis-url is unset); in-memory when unset."""
    placement: Literal["auto", "replicated", "shared", "speech", "chat", "balanced"] = Field(
        "auto", validation_alias=env_aliases("placement")
    )
    """GPU layout of the vLLM engines: auto (shared on one card; replicated on more, manual when a --*-gpus or
    parallel-size flag is given), replicated (one server process per card on the one port, each with every engine
    on its card), shared, speech (Orpheus on every card), chat or balanced (Gemma, Whisper and SNAC on card 0,
    Orpheus on the others; one process). Logged at start; see docs/multi_gpu.md."""
    replicas: int = Field(0, ge=0, le=64, validation_alias=env_aliases("replicas"))
    """Server processes sharing the one port, replica i with its own engines on visible card i (0: one per card
    with --placement replicated and auto on 2+ cards, else 1). With --demo, transformers or remote engines they
    share no card: several processes, for the front end's CPU."""
    replica_base_port: int = Field(0, ge=0, le=65535, validation_alias=env_aliases("replica_base_port"))
    """Replica i also listens alone on this port + i (its own /metrics and /health/ready); 0: --port + 1."""

    # --- connections and the process (hostile clients; see oai_server/runtime_limits.py) ---
    max_connections: int = Field(0, ge=0, validation_alias=env_aliases("max_connections"))
    """Open connections (HTTP and WebSocket) at once; past it: 503 and close (0: the fd limit minus a reserve)."""
    max_header_bytes: int = Field(32768, ge=1024, validation_alias=env_aliases("max_header_bytes"))
    """Largest request line plus headers in bytes; past it the answer is 431 and the connection closes."""
    max_headers: int = Field(128, ge=8, validation_alias=env_aliases("max_headers"))
    """Most header fields in one request; past it the answer is 431 and the connection closes."""
    header_timeout_seconds: float = Field(10.0, gt=0, validation_alias=env_aliases("header_timeout_seconds"))
    """Longest wait for a request's headers, from the connection or the request's first byte; then 408, close."""
    body_timeout_seconds: float = Field(30.0, gt=0, validation_alias=env_aliases("body_timeout_seconds"))
    """A request body must bring 1 KiB (or its end) within each such period after its headers; else 408, close."""
    write_stall_timeout_seconds: float = Field(30.0, gt=0, validation_alias=env_aliases("write_stall_timeout_seconds"))
    """A client that reads nothing this long has its response cut: engine requests aborted, slot freed."""
    keep_alive_timeout_seconds: float = Field(65.0, gt=0, validation_alias=env_aliases("keep_alive_timeout_seconds"))
    """An idle kept-alive HTTP connection is closed after this long. Longer than clients' and proxies' idle pools
    (httpx and the openai SDK 5 s, a cloud load balancer 60 s), so a client never reuses a connection the server is
    closing at that moment ("Server disconnected without sending a response")."""
    max_json_values: int = Field(10000, ge=100, validation_alias=env_aliases("max_json_values"))
    """Most JSON values (strings, numbers, arrays, objects) in one request body; past it 400, counted off the loop."""
    malloc_arena_max: int = Field(2, ge=0, validation_alias=env_aliases("malloc_arena_max"))
    """glibc malloc arenas, set at start (0: glibc's default, 8 per core, which keeps ~45 MB per concurrent stream)."""
    gc_young_threshold: int = Field(20000, ge=0, validation_alias=env_aliases("gc_young_threshold"))
    """Allocations between collections of Python's youngest generation, set once startup is done (0 keeps
    Python's 700). Higher means far fewer collections while a burst of requests comes in (on a CPU, 254 of them
    and 50-75 ms for two bursts of 288 speech streams at 700; 8 and 22 ms at 20 000) for a little more memory."""
    headroom_admission: bool = Field(True, validation_alias=env_aliases("headroom_admission"))
    """Admit a new speech stream only while the running ones generate faster than real time (else 429)."""
    headroom_min_streams: int = Field(16, ge=1, validation_alias=env_aliases("headroom_min_streams"))
    """Speech requests generating below which the real-time headroom check never refuses."""
    headroom_margin: float = Field(1.1, ge=1.0, le=4.0, validation_alias=env_aliases("headroom_margin"))
    """Per-stream audio-token rate a new stream must leave the running ones, in multiples of real time."""
    headroom_overload_margin: float = Field(
        1.25, ge=1.0, le=4.0, validation_alias=env_aliases("headroom_overload_margin")
    )
    """The margin while the gate is refusing (for `--headroom-overload-hold-seconds` after a 429; at least
    `--headroom-margin`): admitted streams keep more speed for their first chunks when the server is past capacity."""
    headroom_overload_hold_seconds: float = Field(
        5.0, ge=0, le=600, validation_alias=env_aliases("headroom_overload_hold_seconds")
    )
    """How long after a 429 the gate keeps `--headroom-overload-margin` (0: never)."""
    headroom_wait_seconds: float = Field(1.5, ge=0, le=60, validation_alias=env_aliases("headroom_wait_seconds"))
    """How long a new speech stream waits for real-time headroom before its 429."""


class Settings(
    RealtimeSettings, LimitSettings, EngineSettings, SpeechInputSettings, SpeechOutputSettings, ServingSettings
):
    """All settings of the server. Field docstrings are the `--help` text and the README table, whose order is the
    groups' from the last base to the first (pydantic takes a later base's fields first)."""

    model_config = SettingsConfigDict(
        env_prefix="OAI_SERVER_", populate_by_name=True, extra="ignore", use_attribute_docstrings=True
    )

    @field_validator("voices", "api_keys", "cors_origins", "warmup_batch_sizes", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.default_voice not in self.voices:
            raise ValueError(f"default_voice {self.default_voice!r} is not in voices {self.voices}")
        if self.engine == "remote" and not (self.llm_remote_url and self.tts_remote_url):
            raise ValueError("engine=remote needs llm_remote_url and tts_remote_url")
        if 0 < self.snac_stretch_frames <= self.snac_frames_per_decode:
            raise ValueError(
                f"snac_stretch_frames {self.snac_stretch_frames} must be 0 (off) or more than "
                f"snac_frames_per_decode {self.snac_frames_per_decode}"
            )
        return self

    @property
    def chat_model_id(self) -> str:
        """The id clients use for chat."""
        return self.llm_served_name or self.llm_model_name

    @property
    def transcription_model_id(self) -> str:
        """The id clients use for transcription."""
        return self.asr_served_name or self.asr_model_name

    @property
    def speech_model_id(self) -> str:
        """The id clients use for speech."""
        return self.tts_served_name or self.tts_model_name

    def all_api_keys(self) -> list[str]:
        """Keys from the settings and the key file, without blanks."""
        keys = [key.get_secret_value() for key in self.api_keys]
        if self.api_key_file is not None:
            keys += self.api_key_file.read_text().split()
        return [key for key in keys if key.strip()]
