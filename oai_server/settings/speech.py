"""The speech settings: what speaks (Orpheus, and SNAC's decoder), what listens (Whisper, the voice activity
detector), and the Realtime API's sessions. `Settings` (this package) holds them with every other group."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .env import env_aliases

DEFAULT_VOICES = ("tara", "leah", "jess", "leo", "dan", "mia", "zac", "zoe", "julia")


class SpeechOutputSettings(BaseSettings):
    """The speech model (Orpheus) and SNAC's decoder."""

    model_config = SettingsConfigDict(use_attribute_docstrings=True)

    # --- TTS (Orpheus) ---
    tts_model_name: str = Field(
        "canopylabs/orpheus-3b-0.1-ft", validation_alias=env_aliases("tts_model_name", "TTS_MODEL_NAME")
    )
    """Orpheus model id or local path (seed: TTS_MODEL_NAME)."""
    tts_served_name: str | None = Field(None, validation_alias=env_aliases("tts_served_name"))
    """Model id reported by /v1/models for speech (default: tts_model_name)."""
    tts_max_model_len: int = Field(2048, ge=64, validation_alias=env_aliases("tts_max_model_len", "TTS_MAX_MODEL_LEN"))
    """Context length of the Orpheus engine (seed: TTS_MAX_MODEL_LEN)."""
    tts_gpu_memory_utilization: float = Field(
        0.35, gt=0, le=1, validation_alias=env_aliases("tts_gpu_memory_utilization", "TTS_GPU_MEMORY_UTILIZATION")
    )
    """GPU memory share of the Orpheus engine on vLLM (seed: TTS_GPU_MEMORY_UTILIZATION)."""
    tts_max_num_seqs: int = Field(256, ge=1, validation_alias=env_aliases("tts_max_num_seqs"))
    """vLLM max_num_seqs for the Orpheus engine (as many as --max-concurrent-streams: past it, admitted requests
    would wait inside the engine for a stream to end, where no queue timeout or 429 reaches them)."""
    tts_stream_interval: int = Field(7, ge=1, le=64, validation_alias=env_aliases("tts_stream_interval"))
    """vLLM stream_interval of the Orpheus engine: tokens per delta (7 = one SNAC frame; less host work)."""
    tts_remote_url: str | None = Field(None, validation_alias=env_aliases("tts_remote_url"))
    """Base URL of a remote OpenAI-compatible server for Orpheus (engine=remote)."""
    tts_remote_model: str | None = Field(None, validation_alias=env_aliases("tts_remote_model"))
    """Model name the remote Orpheus server serves (default: tts_model_name)."""
    remote_api_key: SecretStr | None = Field(None, validation_alias=env_aliases("remote_api_key"))
    """Bearer key sent to the remote engine servers."""
    remote_read_timeout: float = Field(60.0, gt=0, validation_alias=env_aliases("remote_read_timeout"))
    """Longest silence from a remote engine stream before the request fails."""
    tts_temperature: float = Field(0.6, ge=0, le=2, validation_alias=env_aliases("tts_temperature"))
    """Orpheus sampling temperature."""
    tts_top_p: float = Field(0.8, gt=0, le=1, validation_alias=env_aliases("tts_top_p"))
    """Orpheus nucleus sampling."""
    tts_repetition_penalty: float = Field(1.1, ge=1, le=2, validation_alias=env_aliases("tts_repetition_penalty"))
    """Orpheus repetition penalty (>= 1.1 is needed for stable speech)."""
    tts_max_tokens: int = Field(2800, ge=7, validation_alias=env_aliases("tts_max_tokens"))
    """Cap on audio tokens per text segment (2800 tokens = 34 s of audio)."""
    tts_tokens_per_char: float = Field(8.0, gt=0, validation_alias=env_aliases("tts_tokens_per_char"))
    """Per-segment token budget per input character (8.2 ~ 10 chars/s of speech), capped by tts_max_tokens."""
    tts_segment_chars: int = Field(300, ge=40, le=1000, validation_alias=env_aliases("tts_segment_chars"))
    """Long input is split at sentence/clause boundaries into pieces of at most this many characters."""
    tts_pipeline_depth: int = Field(1, ge=1, le=8, validation_alias=env_aliases("tts_pipeline_depth"))
    """Segments of one reply generating at once (1: the next starts once the previous has generated)."""
    voices: Annotated[list[str], NoDecode] = Field(list(DEFAULT_VOICES), validation_alias=env_aliases("voices"))
    """Orpheus voices offered (comma-separated in the environment)."""
    default_voice: str = Field("tara", validation_alias=env_aliases("default_voice"))
    """Voice used for unknown OpenAI voice names and seed requests without a voice."""

    # --- SNAC ---
    snac_model_name: str = Field("hubertsiuzdak/snac_24khz", validation_alias=env_aliases("snac_model_name"))
    """SNAC decoder id or local path."""
    snac_device: str = Field("auto", validation_alias=env_aliases("snac_device", "SNAC_DEVICE"))
    """Device of the SNAC decoder: auto, cpu, cuda, cuda:N (seed: SNAC_DEVICE)."""
    snac_lookahead_frames: int = Field(1, ge=0, le=4, validation_alias=env_aliases("snac_lookahead_frames"))
    """Frames decoded after a frame before it is emitted (latency vs seam quality)."""
    snac_first_lookahead_frames: int | None = Field(
        None, ge=0, le=4, validation_alias=env_aliases("snac_first_lookahead_frames")
    )
    """Lookahead of each stream's first frame alone (default: --snac-lookahead-frames). 0 sends the first audio one
    frame (7 decode steps) sooner, but that frame is decoded without right context: 26 dB from a whole decode
    against 46 with 1 (bench/snac_first_frame.py)."""
    snac_context_frames: int = Field(2, ge=0, le=6, validation_alias=env_aliases("snac_context_frames"))
    """Frames of left context decoded with each emitted frame."""
    snac_frames_per_decode: int = Field(4, ge=1, le=8, validation_alias=env_aliases("snac_frames_per_decode"))
    """Frames emitted per SNAC decode once a stream is running (fewer, larger decodes vs K*85 ms audio steps)."""
    snac_ramp: Literal["step", "gentle", "double"] = Field("gentle", validation_alias=env_aliases("snac_ramp"))
    """How a stream's SNAC chunks grow to --snac-frames-per-decode: step (1, 1, 2, 3, 4 frames: a stream's start
    keeps ~1.7x the cushion on a 250 ms pre-buffer), gentle (1, 1, 2, 2, 3, 3, 3, 4: about twice step's cushion
    near real time, for ~2 % more SNAC work) or double (1, 1, 2, 4: one SNAC window fewer per stream)."""
    snac_hurry_lead_ms: int = Field(0, ge=0, le=5000, validation_alias=env_aliases("snac_hurry_lead_ms"))
    """While a reply's audio sent is less than this many ms ahead of a player that plays it on arrival, send every
    frame SNAC can decode at once instead of waiting for the rest of its chunk (0: off, chunks follow --snac-ramp
    alone). It costs up to 4 SNAC frames decoded per frame sent; on an H200 under overload, where every stream is
    near real time, that made more streams stall, not fewer (session 26)."""
    snac_grow_lead: float = Field(1.0, ge=0, le=8, validation_alias=env_aliases("snac_grow_lead"))
    """Keep a reply's SNAC chunks one frame short of --snac-frames-per-decode until a player that plays its audio on
    arrival holds this many times a full chunk's audio (0: off, the ramp alone). The first full chunk is the longest
    wait of a stream's start: on an H200 under a 1.5x overload, 2 of 1 722 admitted streams stalled with 1 against
    156 of 1 690 with 0 (session 36), for ~6-12 % more SNAC work on streams near real time only. A request with a
    seed keeps the ramp alone, so its audio repeats byte for byte."""
    snac_stretch_frames: int = Field(0, ge=0, le=16, validation_alias=env_aliases("snac_stretch_frames"))
    """Frames of a stretched SNAC chunk (0: off; else more than --snac-frames-per-decode): a reply whose player, playing
    on arrival, holds --snac-grow-lead times that chunk's audio gets chunks this long, fewer decoded frames per frame
    sent (11 for 8 against 7 for 4 with the defaults), shrinking back as its lead falls short. One more window length
    for SNAC (a CUDA graph set, a compiled specialisation); off with --snac-grow-lead 0 and for seeded requests. On an
    H200 8 cost bursts at capacity (208 streams against 240: a second window length, a second graph replay a round)
    and changed nothing under Poisson arrivals (session 39), so it stays off."""
    snac_fill_windows: Literal["auto", "on", "off"] = Field("auto", validation_alias=env_aliases("snac_fill_windows"))
    """Decode a SNAC chunk shorter than --snac-frames-per-decode (a stream's ramp, its last) with more frames of left
    context, up to the steady window's length, where the stream has them, so past its first three windows every
    window of every stream is one batch, one CUDA graph replay (auto: on where SNAC decodes on CUDA with graphs;
    it changes those chunks' samples, towards a whole decode)."""
    snac_crop_decodes: Literal["auto", "on", "off"] = Field("auto", validation_alias=env_aliases("snac_crop_decodes"))
    """Decode a SNAC window past a stream's start only from its context's end on, its decoder's later (costlier)
    stages only where the samples it keeps depend on them: the same PCM to float rounding, less work (a 7-frame window
    0.72 of the time on 2 CPU cores). auto: on where SNAC decodes on the CPU; on CUDA not yet measured."""
    snac_seam_samples: int = Field(240, ge=0, le=2048, validation_alias=env_aliases("snac_seam_samples"))
    """Samples at the end of each SNAC chunk that wait for the stream's next window, which decodes them again with
    more right context (up to 240: free, the crossfade holds them back anyway; more: that much later; 0: off)."""
    snac_max_batch: int = Field(64, ge=1, le=1024, validation_alias=env_aliases("snac_max_batch"))
    """Most SNAC windows a CUDA graph decodes in one replay (the largest captured); on CUDA a round takes up to
    --snac-round-slices times as many."""
    snac_round_slices: int = Field(1, ge=1, le=4, validation_alias=env_aliases("snac_round_slices"))
    """Batches of --snac-max-batch windows one SNAC round takes at most on CUDA, queued on SNAC's stream and waited
    for once (up to 4: a burst's first 256 windows in one round, not yet measured through the server, so 1: a round
    is one graph's batch)."""
    snac_dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", validation_alias=env_aliases("snac_dtype")
    )
    """Precision of the SNAC decoder (auto: float32). float16 takes 23-30 % less of SNAC's GPU time with the compiled
    decoder alone on an H200, at 66 dB from float32, but in the engine's process it cost the churning engine 21 % of
    its tokens/s (session 36), so it stays opt-in; a half precision that decodes below 50 dB from float32 at load
    (weights that overflow it) keeps float32, with a warning."""
    snac_fusion: Literal["off", "decoder"] = Field("off", validation_alias=env_aliases("snac_fusion"))
    """CUDA graphs of SNAC's torch.compile'd decoder (decoder: 2/3 of the GPU time per frame; compiles at warm-up)."""
    snac_depthwise: Literal["auto", "aten", "triton"] = Field("auto", validation_alias=env_aliases("snac_depthwise"))
    """What computes SNAC's depthwise convolutions on CUDA: ATen's generic kernel (45 % of the compiled decoder's GPU
    time on an H200) or one Triton kernel each, with the Snake after a residual unit's convolution fused (triton: the
    same samples to float rounding; elsewhere ATen's). auto: ATen's until the Triton kernel is measured on the GPU."""
    snac_cuda_graphs: bool = Field(True, validation_alias=env_aliases("snac_cuda_graphs"))
    """On CUDA, capture SNAC decodes of the window shapes streams use (ramp, steady, a stream's last) as CUDA graphs
    at warm-up."""
    snac_in_engine: bool = Field(True, validation_alias=env_aliases("snac_in_engine"))
    """With vLLM, decode SNAC in the Orpheus engines' processes (one CUDA context, no time-slicing); with an
    Orpheus engine on every card, each decodes its own streams."""
    snac_low_priority: bool = Field(True, validation_alias=env_aliases("snac_low_priority"))
    """With SNAC in the engines, run the Orpheus engine's own kernels on a CUDA stream of higher priority than
    SNAC's, so SNAC's fill the gaps of its decode steps instead of delaying them."""
    snac_rounds: Literal["thread", "step"] = Field("thread", validation_alias=env_aliases("snac_rounds"))
    """Who answers SNAC's rounds in the Orpheus engine's process: the service's own thread, waking for each (thread),
    or the engine's thread between its steps while 32 or more speech requests run (step: no thread wakes for the GIL
    the engine's scheduler holds; a round trip to that thread cost the engine 30 % of its tokens/s at 192 streams on
    an H200). Measured on an H200 while 192 streams came and went, step made the same tokens/s (15 074 against
    15 050) but each window waited 8.9 ms for its round against 1.0-1.7: thread stays the default."""


class SpeechInputSettings(BaseSettings):
    """Speech recognition (Whisper) and voice activity detection."""

    model_config = SettingsConfigDict(use_attribute_docstrings=True)

    # --- speech recognition (Whisper) and voice activity detection ---
    asr: bool = Field(True, validation_alias=env_aliases("asr"))
    """Load the speech-recognition engine (transcriptions, spoken chat messages, Realtime audio input)."""
    asr_model_name: str = Field(
        "openai/whisper-large-v3-turbo", validation_alias=env_aliases("asr_model_name", "ASR_MODEL_NAME")
    )
    """Whisper model id or local path (seed-style: ASR_MODEL_NAME)."""
    asr_served_name: str | None = Field(None, validation_alias=env_aliases("asr_served_name"))
    """Model id reported by /v1/models for transcription (default: asr_model_name)."""
    asr_gpu_memory_utilization: float = Field(
        0.1, gt=0, le=1, validation_alias=env_aliases("asr_gpu_memory_utilization", "ASR_GPU_MEMORY_UTILIZATION")
    )
    """GPU memory share of the speech-recognition engine on vLLM (ASR_GPU_MEMORY_UTILIZATION)."""
    asr_max_model_len: int = Field(448, ge=64, le=448, validation_alias=env_aliases("asr_max_model_len"))
    """Decoder context of the speech-recognition engine (Whisper: 448 tokens)."""
    asr_max_num_seqs: int = Field(64, ge=1, validation_alias=env_aliases("asr_max_num_seqs"))
    """vLLM max_num_seqs for the speech-recognition engine."""
    asr_max_num_batched_tokens: int = Field(12000, ge=1500, validation_alias=env_aliases("asr_max_num_batched_tokens"))
    """vLLM: tokens one Whisper engine step may take, encoder input included (1500 per 30 s window: 12000
    encodes up to 8 windows a step; vLLM's own default encodes one)."""
    asr_input_workers: int = Field(4, ge=1, le=64, validation_alias=env_aliases("asr_input_workers"))
    """Threads of vLLM's renderer that prepare Whisper inputs (log-mel features, tokens) off the event loop."""
    asr_audio_workers: int = Field(4, ge=1, le=64, validation_alias=env_aliases("asr_audio_workers"))
    """Threads that decode, resample and run the VAD on input audio for transcription (a small pool: the work
    mostly holds the GIL: 32 decodes took 2.2-2.5x as long in 32 threads as in 4 on the same cores)."""
    asr_max_tokens_per_second: float = Field(20.0, ge=0, validation_alias=env_aliases("asr_max_tokens_per_second"))
    """Transcript tokens allowed per second of audio (plus 16), below the model's 448; bounds Whisper's
    hallucination loops on noise (fast speech is ~8 tokens/s). 0: no bound but the model's."""
    asr_max_batch: int = Field(8, ge=1, validation_alias=env_aliases("asr_max_batch"))
    """Transformers engine: utterances transcribed in one batch."""
    asr_remote_url: str | None = Field(None, validation_alias=env_aliases("asr_remote_url"))
    """Base URL of a remote OpenAI-compatible /v1/audio/transcriptions server (engine=remote)."""
    asr_remote_model: str | None = Field(None, validation_alias=env_aliases("asr_remote_model"))
    """Model name the remote transcription server serves (default: asr_model_name)."""
    asr_max_audio_seconds: float = Field(1500.0, gt=0, validation_alias=env_aliases("asr_max_audio_seconds"))
    """Longest audio accepted for transcription or in one chat message (uploads are also capped at 25 MB)."""
    asr_translation: Literal["auto", "yes", "no"] = Field("auto", validation_alias=env_aliases("asr_translation"))
    """Whether the speech model can translate to English (/v1/audio/translations); auto: not for turbo or .en models."""
    vad_threshold: float = Field(0.5, gt=0, lt=1, validation_alias=env_aliases("vad_threshold"))
    """Voice activity: speech probability above which a frame is speech (OpenAI server_vad default 0.5)."""
    vad_prefix_padding_ms: int = Field(300, ge=0, le=10000, validation_alias=env_aliases("vad_prefix_padding_ms"))
    """Voice activity: audio kept before detected speech starts."""
    vad_silence_duration_ms: int = Field(500, ge=0, le=10000, validation_alias=env_aliases("vad_silence_duration_ms"))
    """Voice activity: silence that ends a turn (and where long audio is cut for transcription)."""


class RealtimeSettings(BaseSettings):
    """The Realtime API's sessions (/v1/realtime)."""

    model_config = SettingsConfigDict(use_attribute_docstrings=True)

    # --- Realtime API (/v1/realtime) ---
    realtime_max_sessions: int = Field(64, ge=1, validation_alias=env_aliases("realtime_max_sessions"))
    """Realtime WebSocket sessions at once (each also holds an admission slot); more are refused at the handshake."""
    realtime_max_message_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, validation_alias=env_aliases("realtime_max_message_bytes")
    )
    """Largest client event of a Realtime session (a bigger one gets an `error` event and is dropped)."""
    realtime_max_events_per_second: float = Field(
        200.0, gt=0, validation_alias=env_aliases("realtime_max_events_per_second")
    )
    """Client events per second a Realtime session may send (bursts of twice this); the excess gets `error` events."""
    realtime_max_input_audio_seconds: float = Field(
        120.0, gt=0, le=1500, validation_alias=env_aliases("realtime_max_input_audio_seconds")
    )
    """Most input audio a Realtime session buffers before a commit (a server-VAD turn is committed at this length)."""
    realtime_max_items: int = Field(200, ge=2, validation_alias=env_aliases("realtime_max_items"))
    """Conversation items a Realtime session keeps (the oldest are dropped; prompts are also trimmed to the context)."""
    realtime_idle_timeout_seconds: float = Field(
        600.0, gt=0, validation_alias=env_aliases("realtime_idle_timeout_seconds")
    )
    """A Realtime session with no client event for this long gets an `error` event and is closed."""
    realtime_early_transcription: bool = Field(True, validation_alias=env_aliases("realtime_early_transcription"))
    """Transcribe a server-VAD turn once its silence has lasted 160 ms, while the VAD waits out silence_duration_ms
    to decide the turn ended (dropped if speech resumes): the reply starts sooner by the transcription's time."""
    realtime_seed: int | None = Field(None, validation_alias=env_aliases("realtime_seed"))
    """Sampling seed of every Realtime response (reproducible tests and benchmarks); unset: random."""
