"""Before anything loads: every file the config needs from disk (pretrained weights, tokenizer files, data),
checked at once, so a run that lacks its data does not first spend minutes loading T5-Large."""

import os

from dream_jax.data import clip_tokenizer, pipeline
from dream_jax.interop import pretrained


def missing_files(config):
    """What the config needs from disk and is absent: one line per problem, each saying what to get and where."""
    problems = []

    def need(name, path, files, source):
        if not path:
            problems.append(f"config.{name} is empty; pass --config.{name}=DIR. {source}")
        elif not os.path.isdir(path):
            problems.append(f"config.{name}={path!r} is not a directory. {source}")
        else:
            for group in files:  # each group: alternatives, any one of which will do
                if not any(os.path.isfile(os.path.join(path, f)) for f in group):
                    problems.append(f"config.{name}={path!r} lacks {' or '.join(group)}. {source}")

    if config.tokenizer.kind == "vae":
        weights = pretrained.VAE_WEIGHTS
        need("tokenizer.vae_path", config.tokenizer.vae_path, [["config.json"], [weights, weights + ".index.json"]],
             pretrained.VAE_SOURCE)
    t = config.text
    if t.cond_encoder == "t5":
        weights = pretrained.T5_WEIGHTS
        need("text.t5_path", t.t5_path, [["config.json"], [weights, weights + ".index.json"], ["spiece.model"]],
             pretrained.T5_SOURCE)
    if t.clip_tokenizer == "clip_bpe" and not os.path.isfile(t.clip_vocab_path or ""):
        what = "is empty; pass --config.text.clip_vocab_path=FILE" if not t.clip_vocab_path else "is not a file"
        problems.append(f"config.text.clip_vocab_path={t.clip_vocab_path!r} {what}. {clip_tokenizer.SOURCE}")
    try:
        pipeline.check_data_path(config)
    except FileNotFoundError as e:
        problems.append(str(e))
    return problems


def check_files(config):
    """One FileNotFoundError listing every missing pretrained file or data path of the config."""
    problems = missing_files(config)
    if problems:
        raise FileNotFoundError("missing files (dream_jax never downloads):\n  - " + "\n  - ".join(problems))
