// oai-server page: chat with streamed speech and text to speech, played gaplessly with Web Audio.
// No dependencies. Test hooks live on window.__oai.
"use strict";
(() => {
  const SAMPLE_RATE = 24000;
  const KEY_STORAGE = "oai-server.api-key";
  const $ = (id) => document.getElementById(id);
  const ui = {
    key: $("api-key"), voice: $("voice"), status: $("status"), log: $("log"), form: $("chat-form"),
    message: $("message"), maxTokens: $("max-tokens"), send: $("send"), stop: $("stop"), clear: $("clear"),
    ttsForm: $("tts-form"), ttsInput: $("tts-input"), speak: $("speak"), ttsStop: $("tts-stop"), error: $("error"),
    banner: $("demo-banner"),
  };

  // What tests look at: counts of scheduled audio, the transcript, the last error, the history sent, and how
  // the last request ended (outcome: done, stopped or error) while the pill shows the state now.
  const hooks = {
    scheduledBuffers: 0, scheduledSeconds: 0, ttsBuffers: 0, ttsSeconds: 0,
    transcript: "", audioId: null, lastError: null, status: "idle", outcome: null, history: [], voices: [],
    requests: 0, completed: 0, stopped: 0, demo: false,
  };
  window.__oai = hooks;

  // ---- audio: one AudioContext, buffers started back to back at a running nextTime ----
  let ctx = null;
  let nextTime = 0;
  const sources = new Set();

  function audio() {
    if (!ctx) ctx = new AudioContext({ sampleRate: SAMPLE_RATE });
    if (ctx.state === "suspended") ctx.resume();
    return ctx;
  }

  // A little PCM player: keeps an odd trailing byte for the next piece (raw pcm streams split anywhere).
  function pcmPlayer(kind) {
    let rest = new Uint8Array(0);
    return (chunk) => {
      let bytes = chunk;
      if (rest.length) {
        bytes = new Uint8Array(rest.length + chunk.length);
        bytes.set(rest); bytes.set(chunk, rest.length);
      }
      const n = bytes.length >> 1;
      rest = bytes.slice(n * 2);
      if (n) schedule(bytes, n, kind);
    };
  }

  function schedule(bytes, n, kind) {
    const ac = audio();
    const view = new DataView(bytes.buffer, bytes.byteOffset, n * 2);
    const buffer = ac.createBuffer(1, n, SAMPLE_RATE);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < n; i++) channel[i] = view.getInt16(i * 2, true) / 32768;
    const src = ac.createBufferSource();
    src.buffer = buffer;
    src.connect(ac.destination);
    // A small lead on the first buffer (or after an underrun) absorbs network jitter.
    if (nextTime < ac.currentTime + 0.02) nextTime = ac.currentTime + 0.1;
    src.start(nextTime);
    nextTime += buffer.duration;
    sources.add(src);
    src.onended = () => { sources.delete(src); settle(); };
    if (kind === "tts") { hooks.ttsBuffers++; hooks.ttsSeconds += buffer.duration; }
    else { hooks.scheduledBuffers++; hooks.scheduledSeconds += buffer.duration; }
  }

  function silence() {
    for (const src of sources) { try { src.stop(); } catch (_) { /* not started yet */ } }
    sources.clear();
    nextTime = 0;
  }

  // After a request: "playing" while its audio is still queued, then back to "idle".
  let idleTimer = null;
  function settle() {
    if (controller || hooks.status === "error") return;
    clearTimeout(idleTimer);
    const left = ctx && sources.size ? nextTime - ctx.currentTime : 0;
    if (left > 0.02) {
      setStatus("playing");
      idleTimer = setTimeout(settle, left * 1000 + 50);
    } else {
      setStatus("idle");
    }
  }

  function base64Bytes(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  // ---- HTTP ----
  function headers() {
    const h = { "content-type": "application/json" };
    const key = ui.key.value.trim();
    if (key) h.authorization = `Bearer ${key}`;
    return h;
  }

  class ApiError extends Error {
    constructor(status, body) {
      const err = (body && body.error) || {};
      const code = err.code ? ` (${err.code})` : "";
      super(`${status ? `${status} ` : ""}${err.message || "request failed"}${code}`);
      this.status = status; this.code = err.code || null; this.type = err.type || null; this.param = err.param || null;
    }
  }

  async function failure(res) {
    let body = null;
    try { body = await res.json(); } catch (_) { body = { error: { message: res.statusText } }; }
    return new ApiError(res.status, body);
  }

  async function post(path, payload, signal) {
    const res = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(payload), signal });
    if (!res.ok) throw await failure(res);
    return res;
  }

  // Server-sent events from a fetch body: yields each event's parsed `data:` JSON, stops at [DONE].
  async function* sse(res) {
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        const event = JSON.parse(data);
        if (event.error) throw new ApiError(0, event);
        yield event;
      }
    }
  }

  // ---- UI state ----
  function setStatus(state) {
    hooks.status = state;
    ui.status.textContent = state;
    ui.status.dataset.state = state;
  }

  function showError(err) {
    hooks.lastError = err ? { message: err.message, status: err.status || 0, code: err.code || null } : null;
    ui.error.hidden = !err;
    ui.error.textContent = err ? err.message : "";
    if (err) { hooks.outcome = "error"; setStatus("error"); }
    else if (hooks.status === "error") setStatus("idle");
  }

  // The log follows new text unless the reader has scrolled up to read something older.
  function atBottom() { return ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 40; }
  function follow(wasAtBottom) { if (wasAtBottom) ui.log.scrollTop = ui.log.scrollHeight; }

  function addLine(role, text) {
    const stick = atBottom();
    const li = document.createElement("li");
    li.className = role;
    li.textContent = text;
    ui.log.appendChild(li);
    follow(stick);
    return li;
  }

  function setLine(line, text) {
    const stick = atBottom();
    line.textContent = text;
    follow(stick);
  }

  let controller = null;

  function busy(on, stopButton) {
    ui.send.disabled = on; ui.speak.disabled = on;
    ui.stop.disabled = !(on && stopButton === ui.stop);
    ui.ttsStop.disabled = !(on && stopButton === ui.ttsStop);
  }

  function stop() {
    if (controller) controller.abort();
    silence();
  }

  // ---- chat ----
  // `content` is what the server gets (text, or parts such as the microphone's input_audio); `text` is shown.
  async function sendMessage(text, content = text) {
    audio(); // resume the context inside the click, for autoplay policies
    silence();
    showError(null);
    controller = new AbortController();
    const signal = controller.signal;
    const user = { role: "user", content };
    const payload = {
      model: "gpt-4o-audio-preview", stream: true, modalities: ["text", "audio"],
      audio: { voice: ui.voice.value, format: "pcm16" }, messages: [...hooks.history, user],
    };
    const maxTokens = parseInt(ui.maxTokens.value, 10);
    if (maxTokens > 0) payload.max_completion_tokens = maxTokens;
    addLine("user", text);
    const line = addLine("assistant", "");
    const play = pcmPlayer("chat");
    let transcript = "";
    let audioId = null;
    hooks.transcript = ""; hooks.audioId = null; hooks.requests++;
    setStatus("streaming"); busy(true, ui.stop);
    try {
      const res = await post("/v1/chat/completions", payload, signal);
      for await (const event of sse(res)) {
        const delta = event.choices && event.choices[0] && event.choices[0].delta;
        if (!delta) continue;
        const piece = (delta.audio && delta.audio.transcript) || delta.content || "";
        if (delta.audio && delta.audio.id) audioId = hooks.audioId = delta.audio.id;
        if (piece) {
          transcript += transcript && !/\s$/.test(transcript) && !/^\s/.test(piece) ? ` ${piece}` : piece;
          hooks.transcript = transcript;
          setLine(line, transcript);
        }
        if (delta.audio && delta.audio.data) play(base64Bytes(delta.audio.data));
      }
      // The server keeps the reply under its audio id; sending the id back is the OpenAI way.
      hooks.history.push(user, audioId ? { role: "assistant", audio: { id: audioId } } : { role: "assistant", content: transcript });
      hooks.completed++;
      hooks.outcome = "done";
    } catch (err) {
      if (signal.aborted) {
        line.classList.add("stopped");
        if (transcript) hooks.history.push(user, { role: "assistant", content: transcript });
        hooks.stopped++;
        hooks.outcome = "stopped";
      } else {
        line.remove();
        showError(err);
      }
    } finally {
      controller = null;
      busy(false);
      settle();
    }
  }

  // ---- text to speech: raw pcm streamed from /v1/audio/speech ----
  async function speak(text) {
    audio();
    silence();
    showError(null);
    controller = new AbortController();
    const signal = controller.signal;
    const play = pcmPlayer("tts");
    hooks.requests++;
    setStatus("streaming"); busy(true, ui.ttsStop);
    try {
      const res = await post("/v1/audio/speech", { model: "tts-1", voice: ui.voice.value, input: text, response_format: "pcm" }, signal);
      const reader = res.body.getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        play(value);
      }
      hooks.completed++;
      hooks.outcome = "done";
    } catch (err) {
      if (signal.aborted) { hooks.stopped++; hooks.outcome = "stopped"; } else showError(err);
    } finally {
      controller = null;
      busy(false);
      settle();
    }
  }

  // ---- voices from the seed's GET /models (tts.voices), and whether these are the demo's random models ----
  async function loadVoices() {
    try {
      const res = await fetch("/models", { headers: headers() });
      if (!res.ok) throw await failure(res);
      const models = await res.json();
      hooks.demo = models.demo === true;
      ui.banner.hidden = !hooks.demo;
      ui.banner.textContent = hooks.demo ? models.note || "Demo profile: the models have random weights." : "";
      const voices = (models.tts || {}).voices || [];
      if (!voices.length) return;
      const current = ui.voice.value;
      ui.voice.replaceChildren(...voices.map((v) => new Option(v, v, false, v === current)));
      hooks.voices = voices;
    } catch (err) {
      if (err.status === 401) showError(err);
    }
  }

  // ---- wiring ----
  ui.key.value = localStorage.getItem(KEY_STORAGE) || "";
  ui.key.addEventListener("change", () => {
    localStorage.setItem(KEY_STORAGE, ui.key.value.trim());
    showError(null);
    loadVoices();
  });
  ui.form.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = ui.message.value.trim();
    if (!text || controller) return;
    ui.message.value = "";
    sendMessage(text);
  });
  ui.message.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); ui.form.requestSubmit(); }
  });
  ui.ttsForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = ui.ttsInput.value.trim();
    if (text && !controller) speak(text);
  });
  ui.stop.addEventListener("click", stop);
  ui.ttsStop.addEventListener("click", stop);
  ui.clear.addEventListener("click", () => {
    stop(); hooks.history = []; ui.log.replaceChildren(); showError(null); settle();
  });
  loadVoices();
  // For mic.js (push-to-talk): send a message made of content parts, unless a reply is running.
  window.__oaiChat = {
    send: (text, content) => { if (!controller) sendMessage(text, content); },
    busy: () => controller !== null,
  };
})();
