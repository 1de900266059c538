// Push-to-talk: hold the microphone button, speak, release; the recording goes to chat as an
// `input_audio` part (16 kHz mono wav) and the spoken reply streams back like a typed message.
// Capture: getUserMedia -> an AudioContext at 16 kHz (the browser resamples) -> an AudioWorklet
// that hands the raw samples over -> a wav built here. Needs app.js's window.__oaiChat.
// Test hooks live on window.__oaiMic.
"use strict";
(() => {
  const RATE = 16000;
  const MIN_SECONDS = 0.3;
  const button = document.getElementById("mic");
  const chat = window.__oaiChat;
  if (!button || !chat) return;

  const hooks = { state: "idle", recordedSeconds: 0, sent: 0, lastError: null, lastWavBytes: 0 };
  window.__oaiMic = hooks;

  const TAP = `class OaiMicTap extends AudioWorkletProcessor {
    process(inputs) { const ch = inputs[0] && inputs[0][0]; if (ch) this.port.postMessage(ch.slice(0)); return true; }
  }
  registerProcessor("oai-mic-tap", OaiMicTap);`;

  let session = null; // { ctx, stream, node, chunks, samples }
  let starting = null; // the promise of a start still in progress
  let releaseRequested = false;

  function setState(state) {
    hooks.state = state;
    button.dataset.state = state;
    button.setAttribute("aria-pressed", state === "recording" ? "true" : "false");
  }

  async function start() {
    if (session || starting || chat.busy()) return;
    releaseRequested = false;
    hooks.lastError = null;
    starting = (async () => {
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        throw new Error("The microphone needs a secure page (https or localhost).");
      }
      const stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
      });
      const ctx = new AudioContext({ sampleRate: RATE });
      await ctx.audioWorklet.addModule(URL.createObjectURL(new Blob([TAP], { type: "text/javascript" })));
      const node = new AudioWorkletNode(ctx, "oai-mic-tap");
      const s = { ctx, stream, node, chunks: [], samples: 0 };
      node.port.onmessage = (e) => {
        s.chunks.push(e.data);
        s.samples += e.data.length;
        hooks.recordedSeconds = s.samples / RATE;
      };
      ctx.createMediaStreamSource(stream).connect(node);
      session = s;
      hooks.recordedSeconds = 0;
      setState("recording");
    })();
    try {
      await starting;
    } catch (err) {
      setState("error");
      hooks.lastError = err.message || String(err);
      button.title = hooks.lastError;
    } finally {
      starting = null;
    }
    if (releaseRequested) stop();
  }

  function stop() {
    if (starting) { releaseRequested = true; return; }
    const s = session;
    if (!s) return;
    session = null;
    s.node.port.onmessage = null;
    s.stream.getTracks().forEach((t) => t.stop());
    s.ctx.close();
    if (s.samples / RATE < MIN_SECONDS) { setState("idle"); return; }
    const pcm = new Float32Array(s.samples);
    let offset = 0;
    for (const c of s.chunks) { pcm.set(c, offset); offset += c.length; }
    const wav = encodeWav(pcm, RATE);
    hooks.lastWavBytes = wav.length;
    hooks.sent++;
    setState("idle");
    const seconds = (s.samples / RATE).toFixed(1);
    chat.send(`🎤 ${seconds} s of speech`, [
      { type: "input_audio", input_audio: { data: base64(wav), format: "wav" } },
    ]);
  }

  function encodeWav(samples, rate) {
    const bytes = new Uint8Array(44 + samples.length * 2);
    const view = new DataView(bytes.buffer);
    const text = (at, s) => { for (let i = 0; i < s.length; i++) bytes[at + i] = s.charCodeAt(i); };
    text(0, "RIFF"); view.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVE");
    text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
    view.setUint32(24, rate, true); view.setUint32(28, rate * 2, true); view.setUint16(32, 2, true);
    view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, samples.length * 2, true);
    for (let i = 0; i < samples.length; i++) {
      const v = Math.max(-1, Math.min(1, samples[i]));
      view.setInt16(44 + i * 2, v < 0 ? v * 32768 : v * 32767, true);
    }
    return bytes;
  }

  function base64(bytes) {
    let bin = "";
    for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(bin);
  }

  // Hold to talk: pointer (mouse, touch, pen) or Space/Enter while the button has focus.
  button.addEventListener("pointerdown", (e) => { e.preventDefault(); button.setPointerCapture(e.pointerId); start(); });
  button.addEventListener("pointerup", stop);
  button.addEventListener("pointercancel", stop);
  button.addEventListener("keydown", (e) => {
    if ((e.key === " " || e.key === "Enter") && !e.repeat) { e.preventDefault(); start(); }
  });
  button.addEventListener("keyup", (e) => { if (e.key === " " || e.key === "Enter") stop(); });
  setState("idle");
})();
