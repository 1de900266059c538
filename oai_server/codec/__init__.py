"""Codecs: the byte-level formats the server reads and writes (audio containers, model token layouts)."""
