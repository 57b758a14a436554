"""Host-side text tokenizers: captions -> the CLIP ids of the text tower and the ids + mask of the frozen encoder.

The tiny config uses a word tokenizer for both (nothing to download); the paper's configs use OpenAI CLIP's BPE
and T5's SentencePiece model from local files.

Dimension letters: N captions, C CLIP context, Lt cond length.
"""

import dataclasses
import functools
import os
from typing import Any

import numpy as np

from dream_jax.data.clip_tokenizer import ClipTokenizer
from dream_jax.data.t5_tokenizer import T5Tokenizer
from dream_jax.data.word_tokenizer import WordTokenizer


def _words_clip(tokenizer, context, texts, truncate):
    return tokenizer.encode(texts, context, truncate=truncate)


def _words_cond(tokenizer, context, texts):
    ids = tokenizer.encode(texts, context, truncate=True)
    return ids, (ids != tokenizer.pad_id).astype(np.int32)


def _bpe_clip(tokenizer, texts, truncate):
    return tokenizer.encode(texts, truncate=truncate)


def _t5_cond(tokenizer, texts):
    return tokenizer.encode(texts)


@dataclasses.dataclass(frozen=True)
class TextTokenizers:
    """CLIP ids for the text tower and (ids, mask) for the frozen encoder, from caption strings.

    Holds picklable partials so grain worker processes can tokenise.
    """

    clip: Any
    cond: Any

    def clip_ids(self, captions, truncate=True):
        """int32 [N, C]; with truncate=False a caption longer than the context is a ValueError."""
        return self.clip(list(captions), truncate)

    def cond_ids(self, captions):
        """(ids, mask) int32 [N, Lt], truncated to Lt as the authors' T5 tokenisation."""
        return self.cond(list(captions))


def make_tokenizers(config):
    """The tokenizers the config names; raises ValueError for an unknown one."""
    t, m = config.text, config.model
    context = m.text_tower.context_length
    if t.clip_tokenizer == "words" and t.cond_encoder == "tiny_t5":
        words = WordTokenizer()
        if words.vocab_size > m.text_tower.vocab_size:
            raise ValueError(f"model.text_tower.vocab_size={m.text_tower.vocab_size} < word vocabulary "
                             f"{words.vocab_size}")
        return TextTokenizers(functools.partial(_words_clip, words, context),
                              functools.partial(_words_cond, words, m.cond_len))
    if t.clip_tokenizer == "clip_bpe" and t.cond_encoder == "t5":
        clip = ClipTokenizer(t.clip_vocab_path, context)
        t5 = T5Tokenizer(os.path.join(t.t5_path, "spiece.model"), m.cond_len)
        return TextTokenizers(functools.partial(_bpe_clip, clip), functools.partial(_t5_cond, t5))
    raise ValueError(f"unsupported text.clip_tokenizer={t.clip_tokenizer!r} with text.cond_encoder="
                     f"{t.cond_encoder!r}; expected words+tiny_t5 or clip_bpe+t5")
