// oai-server page, "talk" mode: a spoken conversation over the Realtime API (/v1/realtime, GA events).
// The microphone is captured with an AudioWorklet in a 24 kHz AudioContext and streamed as pcm16
// appends; the server's VAD finds the turns. Replies play gaplessly in the same context. When the
// server reports speech_started, playback stops at once and the page sends conversation.item.truncate
// with the milliseconds of the reply it actually played, so the server keeps only what was heard.
// No dependencies. Test hooks live on window.__talk.
"use strict";
(() => {
  const RATE = 24000;
  const CHUNK = RATE * 40 / 1000; // samples per append (40 ms)
  const KEY_STORAGE = "oai-server.api-key";
  const $ = (id) => document.getElementById(id);
  const ui = { start: $("talk-start"), stop: $("talk-stop"), state: $("talk-state"), log: $("talk-log") };
  if (!ui.start) return;

  const hooks = {
    state: "off", received: {}, appends: 0, scheduled: 0, receivedMs: 0, truncates: [],
    stoppedOnSpeech: 0, lastError: null, user: [], assistant: [], playing: false,
    playedMs: () => played(), inject: (b64) => inject(b64),
  };
  window.__talk = hooks;

  let ws = null, ctx = null, mic = null, worklet = null;
  let pending = new Float32Array(0);
  let injecting = false;
  let reply = null; // the assistant item being played: {id, buffers: [{start, duration}], sources: Set}
  const interrupted = new Set(); // items cut by a barge-in: any late audio of theirs is not played
  let nextTime = 0;

  function setState(state) {
    hooks.state = state;
    ui.state.textContent = state;
    ui.start.disabled = state !== "off" && state !== "error";
    ui.stop.disabled = !ui.start.disabled;
  }

  function line(role, text) {
    const li = document.createElement("li");
    li.className = role;
    li.textContent = text;
    ui.log.append(li);
    li.scrollIntoView({ block: "nearest" });
    return li;
  }

  // ---- capture: mic -> AudioWorklet (128-sample blocks) -> 40 ms pcm16 appends ----
  const WORKLET = `registerProcessor("capture", class extends AudioWorkletProcessor {
    process(inputs) { const ch = inputs[0][0]; if (ch) this.port.postMessage(ch.slice(0)); return true; }
  });`;

  function b64(bytes) {
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(s);
  }

  function pcm16(samples) {
    const out = new Int16Array(samples.length);
    for (let i = 0; i < samples.length; i++) out[i] = Math.max(-1, Math.min(1, samples[i])) * 0x7fff;
    return new Uint8Array(out.buffer);
  }

  function append(audio) {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: "input_audio_buffer.append", audio }));
      hooks.appends++;
    }
  }

  function captured(block) {
    if (injecting) return;
    const joined = new Float32Array(pending.length + block.length);
    joined.set(pending); joined.set(block, pending.length);
    let at = 0;
    for (; at + CHUNK <= joined.length; at += CHUNK) append(b64(pcm16(joined.subarray(at, at + CHUNK))));
    pending = joined.slice(at);
  }

  // Test hook: send base64 pcm16 (24 kHz) as if spoken, in 40 ms appends, with the microphone muted meanwhile.
  function inject(audio) {
    const bytes = Uint8Array.from(atob(audio), (c) => c.charCodeAt(0));
    injecting = true;
    for (let at = 0; at < bytes.length; at += CHUNK * 2) append(b64(bytes.subarray(at, at + CHUNK * 2)));
    injecting = false;
  }

  // ---- playback, and how much of it was heard ----
  function played() {
    if (!reply || !ctx) return 0;
    let ms = 0;
    for (const b of reply.buffers) ms += Math.max(0, Math.min(ctx.currentTime - b.start, b.duration)) * 1000;
    return Math.round(ms);
  }

  function play(itemId, bytes) {
    if (interrupted.has(itemId)) return;
    if (!reply || reply.id !== itemId) reply = { id: itemId, buffers: [], sources: new Set(), heard: 0 };
    const n = bytes.length >> 1;
    const view = new DataView(bytes.buffer, bytes.byteOffset, n * 2);
    const buffer = ctx.createBuffer(1, n, RATE);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < n; i++) channel[i] = view.getInt16(i * 2, true) / 32768;
    const src = ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(ctx.destination);
    if (nextTime < ctx.currentTime + 0.02) nextTime = ctx.currentTime + 0.08; // a small lead absorbs jitter
    src.start(nextTime);
    reply.buffers.push({ start: nextTime, duration: buffer.duration });
    reply.sources.add(src);
    const mine = reply;
    src.onended = () => { mine.sources.delete(src); hooks.playing = mine.sources.size > 0; };
    nextTime += buffer.duration;
    hooks.scheduled++;
    hooks.receivedMs += buffer.duration * 1000;
    hooks.playing = true;
  }

  // The user started speaking: stop the reply now and tell the server what was actually heard.
  function bargeIn() {
    if (!reply || !reply.sources.size) return;
    const heard = played();
    for (const src of reply.sources) { try { src.stop(); } catch (_) { /* not started yet */ } }
    reply.sources.clear();
    hooks.playing = false;
    nextTime = 0;
    hooks.stoppedOnSpeech++;
    ws.send(JSON.stringify({ type: "conversation.item.truncate", item_id: reply.id, content_index: 0, audio_end_ms: heard }));
    hooks.truncates.push({ item_id: reply.id, audio_end_ms: heard });
    interrupted.add(reply.id);
    reply = null;
  }

  // ---- the session ----
  let assistantLine = null;
  function onEvent(event) {
    hooks.received[event.type] = (hooks.received[event.type] || 0) + 1;
    switch (event.type) {
      case "input_audio_buffer.speech_started": bargeIn(); setState("listening"); break;
      case "input_audio_buffer.speech_stopped": setState("thinking"); break;
      case "conversation.item.input_audio_transcription.completed":
        hooks.user.push(event.transcript); line("user", event.transcript); break;
      case "response.output_audio_transcript.delta":
        if (!assistantLine) { assistantLine = line("assistant", ""); hooks.assistant.push(""); }
        assistantLine.textContent += event.delta;
        hooks.assistant[hooks.assistant.length - 1] += event.delta;
        break;
      case "response.output_audio.delta":
        setState("speaking");
        play(event.item_id, Uint8Array.from(atob(event.delta), (c) => c.charCodeAt(0)));
        break;
      case "response.done":
        assistantLine = null;
        if (hooks.state !== "listening") setState("ready");
        break;
      case "error":
        hooks.lastError = event.error;
        line("error", event.error.message);
        break;
    }
  }

  async function start() {
    setState("starting");
    hooks.lastError = null;
    try {
      ctx = new AudioContext({ sampleRate: RATE });
      await ctx.resume();
      mic = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
      const url = URL.createObjectURL(new Blob([WORKLET], { type: "text/javascript" }));
      await ctx.audioWorklet.addModule(url);
      URL.revokeObjectURL(url);
      worklet = new AudioWorkletNode(ctx, "capture");
      worklet.port.onmessage = (m) => captured(m.data);
      ctx.createMediaStreamSource(mic).connect(worklet);
      await connect();
    } catch (err) {
      hooks.lastError = { message: String(err) };
      line("error", String(err));
      stop("error");
    }
  }

  function connect() {
    const key = (($("api-key") || {}).value || localStorage.getItem(KEY_STORAGE) || "").trim();
    const protocols = ["realtime", ...(key ? [`openai-insecure-api-key.${key}`] : [])];
    const base = location.origin.replace(/^http/, "ws");
    ws = new WebSocket(`${base}/v1/realtime?model=gpt-realtime`, protocols);
    ws.onmessage = (m) => onEvent(JSON.parse(m.data));
    ws.onclose = () => { if (hooks.state !== "off") stop(hooks.lastError ? "error" : "off"); };
    return new Promise((resolve, reject) => {
      ws.onerror = () => reject(new Error("could not open /v1/realtime"));
      ws.onopen = () => {
        const voice = ($("voice") || {}).value || "marin";
        const maxTokens = parseInt(($("max-tokens") || {}).value, 10);
        ws.send(JSON.stringify({
          type: "session.update",
          session: {
            type: "realtime",
            ...(maxTokens > 0 ? { max_output_tokens: maxTokens } : {}),
            audio: {
              input: { format: { type: "audio/pcm", rate: RATE }, transcription: { model: "whisper-1" },
                       turn_detection: { type: "server_vad", interrupt_response: true, create_response: true } },
              output: { format: { type: "audio/pcm", rate: RATE }, voice },
            },
          },
        }));
        setState("ready");
        resolve();
      };
    });
  }

  function stop(state = "off") {
    if (ws) { ws.onclose = null; ws.close(); ws = null; }
    if (reply) { for (const src of reply.sources) { try { src.stop(); } catch (_) { /* ignore */ } } reply = null; }
    if (mic) { for (const track of mic.getTracks()) track.stop(); mic = null; }
    if (worklet) { worklet.disconnect(); worklet = null; }
    if (ctx) { ctx.close(); ctx = null; }
    pending = new Float32Array(0);
    nextTime = 0;
    setState(state);
  }

  ui.start.addEventListener("click", start);
  ui.stop.addEventListener("click", () => stop());
  setState("off");
})();
