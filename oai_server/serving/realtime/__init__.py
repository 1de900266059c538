"""The Realtime API's session logic, transport-neutral: no WebSocket or web-framework type in here.

A transport (the WebSocket connection in `routes/realtime_connection.py`) parses client events
(`protocol.realtime.parse_client_event`), hands them to `RealtimeSession.handle`, and sends the
server events the session gives its `EventSink`. Modules:

- `service`: `RealtimeServing`, the per-server entry point (session admission, building sessions);
- `session`: `RealtimeSession`, routing client events by type and owning the session's tasks;
- `conversation`: the conversation items, their transcripts and the turns a reply is built from;
- `input_audio`: the input audio buffer, its formats, and server-VAD turn detection;
- `transcribe`: committed user audio to text through the speech-recognition engine;
- `responder`: one response, through `ReplyService`, rendered as GA events in GA order;
- `audio_out`: reply audio in the session's output format and speed.
"""
