"""OpenAI-compatible voice-assistant server: Gemma 2 chat + Orpheus TTS."""
