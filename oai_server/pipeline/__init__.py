"""Audio pipeline: text segmenting, Orpheus mapping, SNAC streaming, encoding and tempo."""
