"""Text-to-image generation: MAR decoding and SAD (generate.py), prompts and chunked sampling for every caller
(sampler.py), and the `--mode=sample` job (sample.py)."""
