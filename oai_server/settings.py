"""Server settings, from the environment (`OAI_SERVER_*` or the seed's names) and the CLI.

Every field reads `OAI_SERVER_<FIELD>`; the fields the seed system had also read the seed's
own variable (LLM_MODEL_NAME, TTS_GPU_MEMORY_UTILIZATION, PORT, SNAC_DEVICE, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_VOICES = ("tara", "leah", "jess", "leo", "dan", "mia", "zac", "zoe", "julia")

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant. Your replies are spoken aloud, so answer in short, "
    "natural spoken sentences. Never use markdown, lists, headings, code, emoji or URLs. "
    "Keep answers brief unless asked for detail."
)


def _env(name: str, *seed_names: str) -> AliasChoices:
    """The environment names of a field: `OAI_SERVER_<NAME>`, then the seed system's own names, if any.

    The field's plain name is not one of them (a stray `HOST` or `DEVICE` in the environment is not read);
    code still passes values by field name (`populate_by_name`).
    """
    return AliasChoices(f"OAI_SERVER_{name.upper()}", *seed_names)


class Settings(BaseSettings):
    """All settings of the server. Field docstrings are the `--help` text and the README table."""

    model_config = SettingsConfigDict(
        env_prefix="OAI_SERVER_", populate_by_name=True, extra="ignore", use_attribute_docstrings=True
    )

    # --- serving ---
    host: str = Field("0.0.0.0", validation_alias=_env("host"))
    """Address to bind."""
    port: int = Field(8080, ge=0, le=65535, validation_alias=_env("port", "PORT"))
    """Port to bind (seed: PORT)."""
    demo: bool = Field(False, validation_alias=_env("demo"))
    """Offline demo profile: tiny random-weight models generated on first use, CPU only."""
    cache_dir: Path = Field(Path.home() / ".cache" / "oai-server", validation_alias=_env("cache_dir"))
    """Where the demo profile writes its generated models."""
    engine: Literal["auto", "vllm", "transformers", "remote"] = Field("auto", validation_alias=_env("engine"))
    """Engine backend: vllm when installed with CUDA, else transformers (auto); or remote servers."""
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", validation_alias=_env("log_level")
    )
    """Log level (debug, info, warning, error, critical); debug also prints tracebacks of start-up failures."""
    strict_model_names: bool = Field(False, validation_alias=_env("strict_model_names"))
    """Answer unknown model ids with 404 model_not_found; without it chat serves any unknown id with the
    chat model and speech with Orpheus."""

    # --- LLM (Gemma) ---
    llm_model_name: str = Field("google/gemma-2-2b-it", validation_alias=_env("llm_model_name", "LLM_MODEL_NAME"))
    """Chat model id or local path (seed: LLM_MODEL_NAME)."""
    llm_served_name: str | None = Field(None, validation_alias=_env("llm_served_name"))
    """Model id reported by /v1/models for chat (default: llm_model_name)."""
    llm_max_model_len: int = Field(2048, ge=64, validation_alias=_env("llm_max_model_len", "LLM_MAX_MODEL_LEN"))
    """Context length of the chat model; prompts are trimmed to fit (seed: LLM_MAX_MODEL_LEN)."""
    llm_gpu_memory_utilization: float = Field(
        0.25, gt=0, le=1, validation_alias=_env("llm_gpu_memory_utilization", "LLM_GPU_MEMORY_UTILIZATION")
    )
    """GPU memory share of the chat engine on vLLM (seed: LLM_GPU_MEMORY_UTILIZATION)."""
    llm_max_num_seqs: int = Field(256, ge=1, validation_alias=_env("llm_max_num_seqs"))
    """vLLM max_num_seqs for the chat engine (as many as --max-concurrent-streams, as for Orpheus)."""
    llm_stream_interval: int = Field(1, ge=1, le=64, validation_alias=_env("llm_stream_interval"))
    """vLLM stream_interval of the Gemma engine: tokens per text delta (more: less host work per token, text
    later by up to that many steps)."""
    llm_max_tokens: int = Field(512, ge=1, validation_alias=_env("llm_max_tokens"))
    """Default and upper bound of max_tokens for chat replies."""
    llm_remote_url: str | None = Field(None, validation_alias=_env("llm_remote_url"))
    """Base URL of a remote OpenAI-compatible server for the chat model (engine=remote)."""
    llm_remote_model: str | None = Field(None, validation_alias=_env("llm_remote_model"))
    """Model name the remote chat server serves (default: llm_model_name)."""
    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, validation_alias=_env("system_prompt"))
    """Voice-style system prompt prepended to every conversation ('' disables)."""

    # --- TTS (Orpheus) ---
    tts_model_name: str = Field(
        "canopylabs/orpheus-3b-0.1-ft", validation_alias=_env("tts_model_name", "TTS_MODEL_NAME")
    )
    """Orpheus model id or local path (seed: TTS_MODEL_NAME)."""
    tts_served_name: str | None = Field(None, validation_alias=_env("tts_served_name"))
    """Model id reported by /v1/models for speech (default: tts_model_name)."""
    tts_max_model_len: int = Field(2048, ge=64, validation_alias=_env("tts_max_model_len", "TTS_MAX_MODEL_LEN"))
    """Context length of the Orpheus engine (seed: TTS_MAX_MODEL_LEN)."""
    tts_gpu_memory_utilization: float = Field(
        0.35, gt=0, le=1, validation_alias=_env("tts_gpu_memory_utilization", "TTS_GPU_MEMORY_UTILIZATION")
    )
    """GPU memory share of the Orpheus engine on vLLM (seed: TTS_GPU_MEMORY_UTILIZATION)."""
    tts_max_num_seqs: int = Field(256, ge=1, validation_alias=_env("tts_max_num_seqs"))
    """vLLM max_num_seqs for the Orpheus engine (as many as --max-concurrent-streams: past it, admitted requests
    would wait inside the engine for a stream to end, where no queue timeout or 429 reaches them)."""
    tts_stream_interval: int = Field(7, ge=1, le=64, validation_alias=_env("tts_stream_interval"))
    """vLLM stream_interval of the Orpheus engine: tokens per delta (7 = one SNAC frame; less host work)."""
    tts_remote_url: str | None = Field(None, validation_alias=_env("tts_remote_url"))
    """Base URL of a remote OpenAI-compatible server for Orpheus (engine=remote)."""
    tts_remote_model: str | None = Field(None, validation_alias=_env("tts_remote_model"))
    """Model name the remote Orpheus server serves (default: tts_model_name)."""
    remote_api_key: SecretStr | None = Field(None, validation_alias=_env("remote_api_key"))
    """Bearer key sent to the remote engine servers."""
    remote_read_timeout: float = Field(60.0, gt=0, validation_alias=_env("remote_read_timeout"))
    """Longest silence from a remote engine stream before the request fails."""
    tts_temperature: float = Field(0.6, ge=0, le=2, validation_alias=_env("tts_temperature"))
    """Orpheus sampling temperature."""
    tts_top_p: float = Field(0.8, gt=0, le=1, validation_alias=_env("tts_top_p"))
    """Orpheus nucleus sampling."""
    tts_repetition_penalty: float = Field(1.1, ge=1, le=2, validation_alias=_env("tts_repetition_penalty"))
    """Orpheus repetition penalty (>= 1.1 is needed for stable speech)."""
    tts_max_tokens: int = Field(2800, ge=7, validation_alias=_env("tts_max_tokens"))
    """Cap on audio tokens per text segment (2800 tokens = 34 s of audio)."""
    tts_tokens_per_char: float = Field(8.0, gt=0, validation_alias=_env("tts_tokens_per_char"))
    """Per-segment token budget per input character (8.2 ~ 10 chars/s of speech), capped by tts_max_tokens."""
    tts_segment_chars: int = Field(300, ge=40, le=1000, validation_alias=_env("tts_segment_chars"))
    """Long input is split at sentence/clause boundaries into pieces of at most this many characters."""
    tts_pipeline_depth: int = Field(1, ge=1, le=8, validation_alias=_env("tts_pipeline_depth"))
    """Segments of one reply generating at once (1: the next starts once the previous has generated)."""
    voices: Annotated[list[str], NoDecode] = Field(list(DEFAULT_VOICES), validation_alias=_env("voices"))
    """Orpheus voices offered (comma-separated in the environment)."""
    default_voice: str = Field("tara", validation_alias=_env("default_voice"))
    """Voice used for unknown OpenAI voice names and seed requests without a voice."""

    # --- SNAC ---
    snac_model_name: str = Field("hubertsiuzdak/snac_24khz", validation_alias=_env("snac_model_name"))
    """SNAC decoder id or local path."""
    snac_device: str = Field("auto", validation_alias=_env("snac_device", "SNAC_DEVICE"))
    """Device of the SNAC decoder: auto, cpu, cuda, cuda:N (seed: SNAC_DEVICE)."""
    snac_lookahead_frames: int = Field(1, ge=0, le=4, validation_alias=_env("snac_lookahead_frames"))
    """Frames decoded after a frame before it is emitted (latency vs seam quality)."""
    snac_first_lookahead_frames: int | None = Field(
        None, ge=0, le=4, validation_alias=_env("snac_first_lookahead_frames")
    )
    """Lookahead of each stream's first frame alone (default: --snac-lookahead-frames). 0 sends the first audio one
    frame (7 decode steps) sooner, but that frame is decoded without right context: 26 dB from a whole decode
    against 46 with 1 (bench/snac_first_frame.py)."""
    snac_context_frames: int = Field(2, ge=0, le=6, validation_alias=_env("snac_context_frames"))
    """Frames of left context decoded with each emitted frame."""
    snac_frames_per_decode: int = Field(4, ge=1, le=8, validation_alias=_env("snac_frames_per_decode"))
    """Frames emitted per SNAC decode once a stream is running (fewer, larger decodes vs K*85 ms audio steps)."""
    snac_ramp: Literal["step", "gentle", "double"] = Field("gentle", validation_alias=_env("snac_ramp"))
    """How a stream's SNAC chunks grow to --snac-frames-per-decode: step (1, 1, 2, 3, 4 frames: a stream's start
    keeps ~1.7x the cushion on a 250 ms pre-buffer), gentle (1, 1, 2, 2, 3, 3, 3, 4: about twice step's cushion
    near real time, for ~2 % more SNAC work) or double (1, 1, 2, 4: one SNAC window fewer per stream)."""
    snac_hurry_lead_ms: int = Field(0, ge=0, le=5000, validation_alias=_env("snac_hurry_lead_ms"))
    """While a reply's audio sent is less than this many ms ahead of a player that plays it on arrival, send every
    frame SNAC can decode at once instead of waiting for the rest of its chunk (0: off, chunks follow --snac-ramp
    alone). It costs up to 4 SNAC frames decoded per frame sent; on an H200 under overload, where every stream is
    near real time, that made more streams stall, not fewer (session 26)."""
    snac_grow_lead: float = Field(1.0, ge=0, le=8, validation_alias=_env("snac_grow_lead"))
    """Keep a reply's SNAC chunks one frame short of --snac-frames-per-decode until a player that plays its audio on
    arrival holds this many times a full chunk's audio (0: off, the ramp alone). The first full chunk is the longest
    wait of a stream's start: on an H200 under a 1.5x overload, 2 of 1 722 admitted streams stalled with 1 against
    156 of 1 690 with 0 (session 36), for ~6-12 % more SNAC work on streams near real time only. A request with a
    seed keeps the ramp alone, so its audio repeats byte for byte."""
    snac_stretch_frames: int = Field(0, ge=0, le=16, validation_alias=_env("snac_stretch_frames"))
    """Frames of a stretched SNAC chunk (0: off; else more than --snac-frames-per-decode): a reply whose player, playing
    on arrival, holds --snac-grow-lead times that chunk's audio gets chunks this long, fewer decoded frames per frame
    sent (11 for 8 against 7 for 4 with the defaults), shrinking back as its lead falls short. One more window length
    for SNAC (a CUDA graph set, a compiled specialisation); off with --snac-grow-lead 0 and for seeded requests. On an
    H200 8 cost bursts at capacity (208 streams against 240: a second window length, a second graph replay a round)
    and changed nothing under Poisson arrivals (session 39), so it stays off."""
    snac_fill_windows: Literal["auto", "on", "off"] = Field("auto", validation_alias=_env("snac_fill_windows"))
    """Decode a SNAC chunk shorter than --snac-frames-per-decode (a stream's ramp, its last) with more frames of left
    context, up to the steady window's length, where the stream has them, so past its first three windows every
    window of every stream is one batch, one CUDA graph replay (auto: on where SNAC decodes on CUDA with graphs;
    it changes those chunks' samples, towards a whole decode)."""
    snac_crop_decodes: Literal["auto", "on", "off"] = Field("auto", validation_alias=_env("snac_crop_decodes"))
    """Decode a SNAC window past a stream's start only from its context's end on, its decoder's later (costlier)
    stages only where the samples it keeps depend on them: the same PCM to float rounding, less work (a 7-frame window
    0.72 of the time on 2 CPU cores). auto: on where SNAC decodes on the CPU; on CUDA not yet measured."""
    snac_seam_samples: int = Field(240, ge=0, le=2048, validation_alias=_env("snac_seam_samples"))
    """Samples at the end of each SNAC chunk that wait for the stream's next window, which decodes them again with
    more right context (up to 240: free, the crossfade holds them back anyway; more: that much later; 0: off)."""
    snac_max_batch: int = Field(64, ge=1, le=1024, validation_alias=_env("snac_max_batch"))
    """Most SNAC windows a CUDA graph decodes in one replay (the largest captured); on CUDA a round takes up to four
    times as many (a burst's first windows), queued as slices of it and waited for once."""
    snac_dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field("auto", validation_alias=_env("snac_dtype"))
    """Precision of the SNAC decoder (auto: float32). float16 takes 23-30 % less of SNAC's GPU time with the compiled
    decoder alone on an H200, at 66 dB from float32, but in the engine's process it cost the churning engine 21 % of
    its tokens/s (session 36), so it stays opt-in; a half precision that decodes below 50 dB from float32 at load
    (weights that overflow it) keeps float32, with a warning."""
    snac_fusion: Literal["off", "decoder"] = Field("off", validation_alias=_env("snac_fusion"))
    """CUDA graphs of SNAC's torch.compile'd decoder (decoder: 2/3 of the GPU time per frame; compiles at warm-up)."""
    snac_depthwise: Literal["auto", "aten", "triton"] = Field("auto", validation_alias=_env("snac_depthwise"))
    """What computes SNAC's depthwise convolutions on CUDA: ATen's generic kernel (45 % of the compiled decoder's GPU
    time on an H200) or one Triton kernel each, with the Snake after a residual unit's convolution fused (triton: the
    same samples to float rounding; elsewhere ATen's). auto: ATen's until the Triton kernel is measured on the GPU."""
    snac_cuda_graphs: bool = Field(True, validation_alias=_env("snac_cuda_graphs"))
    """On CUDA, capture SNAC decodes of the window shapes streams use (ramp, steady, a stream's last) as CUDA graphs
    at warm-up."""
    snac_in_engine: bool = Field(True, validation_alias=_env("snac_in_engine"))
    """With vLLM, decode SNAC in the Orpheus engines' processes (one CUDA context, no time-slicing); with an
    Orpheus engine on every card, each decodes its own streams."""
    snac_low_priority: bool = Field(True, validation_alias=_env("snac_low_priority"))
    """With SNAC in the engines, run the Orpheus engine's own kernels on a CUDA stream of higher priority than
    SNAC's, so SNAC's fill the gaps of its decode steps instead of delaying them."""
    snac_rounds: Literal["thread", "step"] = Field("thread", validation_alias=_env("snac_rounds"))
    """Who answers SNAC's rounds in the Orpheus engine's process: the service's own thread, waking for each (thread),
    or the engine's thread between its steps while 32 or more speech requests run (step: no thread wakes for the GIL
    the engine's scheduler holds; a round trip to that thread cost the engine 30 % of its tokens/s at 192 streams on
    an H200). thread until step is measured on the GPU."""

    # --- speech recognition (Whisper) and voice activity detection ---
    asr: bool = Field(True, validation_alias=_env("asr"))
    """Load the speech-recognition engine (transcriptions, spoken chat messages, Realtime audio input)."""
    asr_model_name: str = Field(
        "openai/whisper-large-v3-turbo", validation_alias=_env("asr_model_name", "ASR_MODEL_NAME")
    )
    """Whisper model id or local path (seed-style: ASR_MODEL_NAME)."""
    asr_served_name: str | None = Field(None, validation_alias=_env("asr_served_name"))
    """Model id reported by /v1/models for transcription (default: asr_model_name)."""
    asr_gpu_memory_utilization: float = Field(
        0.1, gt=0, le=1, validation_alias=_env("asr_gpu_memory_utilization", "ASR_GPU_MEMORY_UTILIZATION")
    )
    """GPU memory share of the speech-recognition engine on vLLM (ASR_GPU_MEMORY_UTILIZATION)."""
    asr_max_model_len: int = Field(448, ge=64, le=448, validation_alias=_env("asr_max_model_len"))
    """Decoder context of the speech-recognition engine (Whisper: 448 tokens)."""
    asr_max_num_seqs: int = Field(64, ge=1, validation_alias=_env("asr_max_num_seqs"))
    """vLLM max_num_seqs for the speech-recognition engine."""
    asr_max_num_batched_tokens: int = Field(12000, ge=1500, validation_alias=_env("asr_max_num_batched_tokens"))
    """vLLM: tokens one Whisper engine step may take, encoder input included (1500 per 30 s window: 12000
    encodes up to 8 windows a step; vLLM's own default encodes one)."""
    asr_input_workers: int = Field(4, ge=1, le=64, validation_alias=_env("asr_input_workers"))
    """Threads of vLLM's renderer that prepare Whisper inputs (log-mel features, tokens) off the event loop."""
    asr_audio_workers: int = Field(4, ge=1, le=64, validation_alias=_env("asr_audio_workers"))
    """Threads that decode, resample and run the VAD on input audio for transcription (a small pool: the work
    mostly holds the GIL: 32 decodes took 2.2-2.5x as long in 32 threads as in 4 on the same cores)."""
    asr_max_tokens_per_second: float = Field(20.0, ge=0, validation_alias=_env("asr_max_tokens_per_second"))
    """Transcript tokens allowed per second of audio (plus 16), below the model's 448; bounds Whisper's
    hallucination loops on noise (fast speech is ~8 tokens/s). 0: no bound but the model's."""
    asr_max_batch: int = Field(8, ge=1, validation_alias=_env("asr_max_batch"))
    """Transformers engine: utterances transcribed in one batch."""
    asr_remote_url: str | None = Field(None, validation_alias=_env("asr_remote_url"))
    """Base URL of a remote OpenAI-compatible /v1/audio/transcriptions server (engine=remote)."""
    asr_remote_model: str | None = Field(None, validation_alias=_env("asr_remote_model"))
    """Model name the remote transcription server serves (default: asr_model_name)."""
    asr_max_audio_seconds: float = Field(1500.0, gt=0, validation_alias=_env("asr_max_audio_seconds"))
    """Longest audio accepted for transcription or in one chat message (uploads are also capped at 25 MB)."""
    asr_translation: Literal["auto", "yes", "no"] = Field("auto", validation_alias=_env("asr_translation"))
    """Whether the speech model can translate to English (/v1/audio/translations); auto: not for turbo or .en models."""
    vad_threshold: float = Field(0.5, gt=0, lt=1, validation_alias=_env("vad_threshold"))
    """Voice activity: speech probability above which a frame is speech (OpenAI server_vad default 0.5)."""
    vad_prefix_padding_ms: int = Field(300, ge=0, le=10000, validation_alias=_env("vad_prefix_padding_ms"))
    """Voice activity: audio kept before detected speech starts."""
    vad_silence_duration_ms: int = Field(500, ge=0, le=10000, validation_alias=_env("vad_silence_duration_ms"))
    """Voice activity: silence that ends a turn (and where long audio is cut for transcription)."""

    # --- placement (several GPUs; defaults keep one-GPU behaviour) ---
    llm_gpus: str | None = Field(None, validation_alias=_env("llm_gpus"))
    """GPU indices of the chat engine, e.g. "0" (vLLM; default: all visible, shared)."""
    tts_gpus: str | None = Field(None, validation_alias=_env("tts_gpus"))
    """GPU indices of the Orpheus engine, e.g. "1" or "1,2,3,4" (tensor x data parallel cards)."""
    llm_tensor_parallel_size: int = Field(1, ge=1, validation_alias=_env("llm_tensor_parallel_size"))
    """Tensor-parallel GPUs of the chat engine."""
    tts_tensor_parallel_size: int = Field(1, ge=1, validation_alias=_env("tts_tensor_parallel_size"))
    """Tensor-parallel GPUs of each Orpheus replica."""
    tts_data_parallel_size: int = Field(1, ge=1, validation_alias=_env("tts_data_parallel_size"))
    """Data-parallel Orpheus replicas (vLLM balances requests across them)."""
    asr_gpus: str | None = Field(None, validation_alias=_env("asr_gpus"))
    """GPU index of the speech-recognition engine, e.g. "0" (vLLM; default: all visible, shared)."""

    # --- chat audio ---
    audio_ttl_seconds: int = Field(3600, ge=1, validation_alias=_env("audio_ttl_seconds"))
    """How long an audio id from a reply can be referred to in later turns (expires_at)."""
    audio_cache_size: int = Field(10000, ge=1, validation_alias=_env("audio_cache_size"))
    """Most audio ids kept (oldest dropped first)."""
    first_segment_words: int = Field(4, ge=0, validation_alias=_env("first_segment_words"))
    """The first spoken segment may be cut at a clause once it has this many words (0 disables)."""
    first_segment_max_words: int = Field(10, ge=0, validation_alias=_env("first_segment_max_words"))
    """The first spoken segment holds at most this many words, cut even without punctuation (0 disables)."""

    # --- engines (vLLM) ---
    dtype: str = Field("auto", validation_alias=_env("dtype"))
    """Model dtype (auto, bfloat16, float16, float32)."""
    enforce_eager: bool = Field(False, validation_alias=_env("enforce_eager"))
    """vLLM: disable CUDA graphs (faster start, slower decode)."""
    engine_log_stats: bool = Field(False, validation_alias=_env("engine_log_stats"))
    """vLLM: keep each engine's per-step statistics and its periodic throughput log line. Off by default:
    they are computed for every token of every stream on the server's event loop (about a sixth of its busy
    time at 288 streams on two H200s), and /metrics has this server's own figures."""
    tts_kv_cache_dtype: str = Field("auto", validation_alias=_env("tts_kv_cache_dtype"))
    """vLLM KV-cache dtype for Orpheus (auto or fp8)."""
    tts_quantization: str | None = Field(None, validation_alias=_env("tts_quantization"))
    """vLLM weight quantization for Orpheus (e.g. fp8)."""
    tts_band_graphs: bool = Field(True, validation_alias=_env("tts_band_graphs"))
    """vLLM: run the Orpheus slot processor's band work (penalty, top-p) of a step as one CUDA graph replay instead
    of ~15 kernel launches from the engine core's host-bound thread, every batch size's graph captured in the
    warm-up (an H200: +10 % tokens/s at 128 streams in process, speech capacity 192 through HTTP against 144)."""
    tts_frame_deltas: bool = Field(True, validation_alias=_env("tts_frame_deltas"))
    """vLLM: hold Orpheus's lone first-token delta until a whole frame, so each frame reaches the server the step it
    is sampled, not one step later (with a --tts-stream-interval of whole frames; off: vLLM's own rule)."""
    tts_cudagraph_mode: Literal["auto", "full", "full_and_piecewise", "full_decode_only", "piecewise", "none"] = Field(
        "auto", validation_alias=_env("tts_cudagraph_mode")
    )
    """vLLM's CUDA graph mode for Orpheus. auto: vLLM's, full graphs for steps of decodes alone, piecewise ones (the
    attention launched from Python layer by layer) for steps with a prompt in them; full: full graphs for those too
    (FlashAttention 3 allows it). On an H200 it bought nothing in process with streams coming and going (session 29:
    12 628 against 12 323 tokens/s at 128 streams, within one machine's run-to-run spread)."""
    tts_arrival_window_ms: float = Field(30.0, ge=0.0, le=200.0, validation_alias=_env("tts_arrival_window_ms"))
    """vLLM: while 16 or more Orpheus streams generate, a new one waits up to this long to enter the engine with
    every other that arrives meanwhile, so their prompts share one step (a step with a prompt in it costs vLLM's
    host more than one of decodes alone). 0: each enters at once. On an H200 at 128 streams coming and going, 30
    cut what each new stream cost our pipeline from ~12.5 to ~1.7 ms of engine time (session 30)."""
    tts_engine_switch_interval_ms: float = Field(
        0.0, ge=0.0, le=100.0, validation_alias=_env("tts_engine_switch_interval_ms")
    )
    """vLLM: the GIL switch interval of the Orpheus engine's process, in ms (0: Python's, 5 ms). SNAC's service thread
    there wakes for every worker round and may wait this long for the GIL while the engine's scheduler holds it. On
    an H200 at 192 streams in process, a round trip a round to that thread, no SNAC work, cost the engine 30 % of
    its steady tokens/s at 5 ms and 1 % at 0.5 (session 33, one engine each, whose spread is 16-19 %). As an A/B on
    one engine while streams came and went (session 34) 0.5 ms changed ours by -5 to +8 %, within the drift of the
    measurement itself: it stays off (bench/README.md)."""
    tts_prefix_caching: bool = Field(False, validation_alias=_env("tts_prefix_caching"))
    """vLLM prefix caching for Orpheus. Off by default: no stream reuses another's audio, and hashing every block
    of it costs the engine core's host thread (an H200 at 256 streams: +18 % tokens/s without it)."""
    warmup_batch_sizes: Annotated[list[int], NoDecode] = Field(
        [1, 2, 4, 8, 16, 32, 64, 128], validation_alias=_env("warmup_batch_sizes")
    )
    """Batch sizes of the sampled warm-up requests run before readiness (empty disables)."""
    device: str = Field("auto", validation_alias=_env("device"))
    """Device of the transformers engines: auto, cpu, cuda."""
    max_concurrency: int = Field(8, ge=1, validation_alias=_env("max_concurrency"))
    """Requests generating at once in each transformers engine."""

    # --- limits and security ---
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list, validation_alias=_env("api_keys"))
    """Accepted API keys (comma-separated in OAI_SERVER_API_KEYS); empty disables auth."""
    api_key_file: Path | None = Field(None, validation_alias=_env("api_key_file"))
    """File with one API key per line."""
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, validation_alias=_env("cors_origins"))
    """Origins allowed by CORS (comma-separated; '*' for any)."""
    max_input_chars: int = Field(4096, ge=1, validation_alias=_env("max_input_chars"))
    """Longest speech input and longest single chat message (also the seed routes' `prompt` and `message`)."""
    max_messages: int = Field(256, ge=1, validation_alias=_env("max_messages"))
    """Most messages in one chat request."""
    max_concurrent_streams: int = Field(256, ge=1, validation_alias=_env("max_concurrent_streams"))
    """Requests served at once; more wait in the queue."""
    max_queued: int = Field(512, ge=0, validation_alias=_env("max_queued"))
    """Requests waiting for a slot; past this the answer is 429."""
    queue_timeout_seconds: float = Field(10.0, gt=0, validation_alias=_env("queue_timeout_seconds"))
    """Longest wait in the queue before a 429."""
    request_timeout_seconds: float = Field(300.0, gt=0, validation_alias=_env("request_timeout_seconds"))
    """Deadline of one request; a stuck engine request is cancelled after it."""
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, validation_alias=_env("max_body_bytes"))
    """Largest request body accepted (413 past it)."""
    shutdown_drain_seconds: float = Field(20.0, ge=0, validation_alias=_env("shutdown_drain_seconds"))
    """On SIGTERM, how long in-flight streams may finish before they are aborted."""
    redis_url: str | None = Field(None, validation_alias=_env("redis_url"))
    """Redis URL for the shared audio-id cache (scale-out); in-memory when unset."""
    audio_store_path: Path | None = Field(None, validation_alias=_env("audio_store_path"))
    """SQLite file of audio ids shared by the server processes of one host (--placement replicated makes one for
    its replicas when --redis-url is unset); in-memory when unset."""
    placement: Literal["auto", "replicated", "shared", "speech", "chat", "balanced"] = Field(
        "auto", validation_alias=_env("placement")
    )
    """GPU layout of the vLLM engines: auto (shared on one card; replicated on more, manual when a --*-gpus or
    parallel-size flag is given), replicated (one server process per card on the one port, each with every engine
    on its card), shared, speech (Orpheus on every card), chat or balanced (Gemma, Whisper and SNAC on card 0,
    Orpheus on the others; one process). Logged at start; see docs/multi_gpu.md."""
    replicas: int = Field(0, ge=0, le=64, validation_alias=_env("replicas"))
    """Server processes sharing the one port, replica i with its own engines on visible card i (0: one per card
    with --placement replicated and auto on 2+ cards, else 1). With --demo, transformers or remote engines they
    share no card: several processes, for the front end's CPU."""
    replica_base_port: int = Field(0, ge=0, le=65535, validation_alias=_env("replica_base_port"))
    """Replica i also listens alone on this port + i (its own /metrics and /health/ready); 0: --port + 1."""

    # --- connections and the process (hostile clients; see oai_server/runtime_limits.py) ---
    max_connections: int = Field(0, ge=0, validation_alias=_env("max_connections"))
    """Open connections (HTTP and WebSocket) at once; past it: 503 and close (0: the fd limit minus a reserve)."""
    max_header_bytes: int = Field(32768, ge=1024, validation_alias=_env("max_header_bytes"))
    """Largest request line plus headers in bytes; past it the answer is 431 and the connection closes."""
    max_headers: int = Field(128, ge=8, validation_alias=_env("max_headers"))
    """Most header fields in one request; past it the answer is 431 and the connection closes."""
    header_timeout_seconds: float = Field(10.0, gt=0, validation_alias=_env("header_timeout_seconds"))
    """Longest wait for a request's headers, from the connection or the request's first byte; then 408, close."""
    body_timeout_seconds: float = Field(30.0, gt=0, validation_alias=_env("body_timeout_seconds"))
    """A request body must bring 1 KiB (or its end) within each such period after its headers; else 408, close."""
    write_stall_timeout_seconds: float = Field(30.0, gt=0, validation_alias=_env("write_stall_timeout_seconds"))
    """A client that reads nothing this long has its response cut: engine requests aborted, slot freed."""
    keep_alive_timeout_seconds: float = Field(65.0, gt=0, validation_alias=_env("keep_alive_timeout_seconds"))
    """An idle kept-alive HTTP connection is closed after this long. Longer than clients' and proxies' idle pools
    (httpx and the openai SDK 5 s, a cloud load balancer 60 s), so a client never reuses a connection the server is
    closing at that moment ("Server disconnected without sending a response")."""
    max_json_values: int = Field(10000, ge=100, validation_alias=_env("max_json_values"))
    """Most JSON values (strings, numbers, arrays, objects) in one request body; past it 400, counted off the loop."""
    malloc_arena_max: int = Field(2, ge=0, validation_alias=_env("malloc_arena_max"))
    """glibc malloc arenas, set at start (0: glibc's default, 8 per core, which keeps ~45 MB per concurrent stream)."""
    gc_young_threshold: int = Field(20000, ge=0, validation_alias=_env("gc_young_threshold"))
    """Allocations between collections of Python's youngest generation, set once startup is done (0 keeps
    Python's 700). Higher means far fewer collections while a burst of requests comes in (on a CPU, 254 of them
    and 50-75 ms for two bursts of 288 speech streams at 700; 8 and 22 ms at 20 000) for a little more memory."""
    headroom_admission: bool = Field(True, validation_alias=_env("headroom_admission"))
    """Admit a new speech stream only while the running ones generate faster than real time (else 429)."""
    headroom_min_streams: int = Field(16, ge=1, validation_alias=_env("headroom_min_streams"))
    """Speech requests generating below which the real-time headroom check never refuses."""
    headroom_margin: float = Field(1.1, ge=1.0, le=4.0, validation_alias=_env("headroom_margin"))
    """Per-stream audio-token rate a new stream must leave the running ones, in multiples of real time."""
    headroom_overload_margin: float = Field(1.25, ge=1.0, le=4.0, validation_alias=_env("headroom_overload_margin"))
    """The margin while the gate is refusing (for `--headroom-overload-hold-seconds` after a 429; at least
    `--headroom-margin`): admitted streams keep more speed for their first chunks when the server is past capacity."""
    headroom_overload_hold_seconds: float = Field(
        5.0, ge=0, le=600, validation_alias=_env("headroom_overload_hold_seconds")
    )
    """How long after a 429 the gate keeps `--headroom-overload-margin` (0: never)."""
    headroom_wait_seconds: float = Field(1.5, ge=0, le=60, validation_alias=_env("headroom_wait_seconds"))
    """How long a new speech stream waits for real-time headroom before its 429."""
    # --- Realtime API (/v1/realtime) ---
    realtime_max_sessions: int = Field(64, ge=1, validation_alias=_env("realtime_max_sessions"))
    """Realtime WebSocket sessions at once (each also holds an admission slot); more are refused at the handshake."""
    realtime_max_message_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, validation_alias=_env("realtime_max_message_bytes")
    )
    """Largest client event of a Realtime session (a bigger one gets an `error` event and is dropped)."""
    realtime_max_events_per_second: float = Field(200.0, gt=0, validation_alias=_env("realtime_max_events_per_second"))
    """Client events per second a Realtime session may send (bursts of twice this); the excess gets `error` events."""
    realtime_max_input_audio_seconds: float = Field(
        120.0, gt=0, le=1500, validation_alias=_env("realtime_max_input_audio_seconds")
    )
    """Most input audio a Realtime session buffers before a commit (a server-VAD turn is committed at this length)."""
    realtime_max_items: int = Field(200, ge=2, validation_alias=_env("realtime_max_items"))
    """Conversation items a Realtime session keeps (the oldest are dropped; prompts are also trimmed to the context)."""
    realtime_idle_timeout_seconds: float = Field(600.0, gt=0, validation_alias=_env("realtime_idle_timeout_seconds"))
    """A Realtime session with no client event for this long gets an `error` event and is closed."""
    realtime_early_transcription: bool = Field(True, validation_alias=_env("realtime_early_transcription"))
    """Transcribe a server-VAD turn once its silence has lasted 160 ms, while the VAD waits out silence_duration_ms
    to decide the turn ended (dropped if speech resumes): the reply starts sooner by the transcription's time."""
    realtime_seed: int | None = Field(None, validation_alias=_env("realtime_seed"))
    """Sampling seed of every Realtime response (reproducible tests and benchmarks); unset: random."""

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
