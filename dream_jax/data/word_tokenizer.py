"""Word-level tokenizer of the tiny text towers, with a closed vocabulary from the captioned-shapes set.

Text is lower-cased and split into runs of letters/digits; every other non-space character (',' and ':'
in our captions) is a token of its own, so `decode` can put captions back together exactly. The
vocabulary is every token of every caption and zero-shot prompt that `synthetic` can write, plus four
special tokens: pad = 0, unk = 1, sot = 2 and eot = the highest id, because the CLIP text tower pools
at argmax(token ids) as OpenCLIP does.

Dimension letters: N texts, L context length (tokens).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from dream_jax.data import synthetic

PAD, UNK, SOT, EOT = "<pad>", "<unk>", "<sot>", "<eot>"
_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """Lower-cased tokens of `text`: letter/digit runs, and each other non-space character alone."""
    return _TOKEN.findall(text.lower())


def synthetic_words() -> list[str]:
    """Sorted tokens of every caption and zero-shot prompt the captioned-shapes set can produce."""
    texts = [
        synthetic.caption(sh, co, po, si, t)
        for sh in range(len(synthetic.SHAPES))
        for co in range(len(synthetic.COLORS))
        for po in range(len(synthetic.POSITIONS))
        for si in range(len(synthetic.SIZES))
        for t in range(len(synthetic.TEMPLATES))
    ]
    texts += [synthetic.shape_color_prompt(sh, co) for sh, co in synthetic.shape_color_classes()]
    return sorted({word for text in texts for word in split_words(text)})


def _join(words: list[str]) -> str:
    """Inverse of split_words for our captions: punctuation sticks to the word before it."""
    text = ""
    for word in words:
        punctuation = len(word) == 1 and not word.isalnum()
        glue = "" if not text or punctuation else " "
        text += glue + word
    return text


class WordTokenizer:
    """Maps texts to int32 [N, L] token ids laid out as [sot, words..., eot, pad...] and back."""

    pad_id = 0
    unk_id = 1
    sot_id = 2

    def __init__(self, words: Sequence[str] | None = None):
        words = synthetic_words() if words is None else sorted({w.lower() for w in words})
        specials = {PAD, UNK, SOT, EOT}
        for word in words:
            if word in specials or split_words(word) != [word]:
                raise ValueError(f"vocabulary word {word!r} is not a single plain token")
        self._id_to_word = (PAD, UNK, SOT, *words, EOT)
        self._word_to_id = {word: i for i, word in enumerate(self._id_to_word)}
        self.eot_id = len(self._id_to_word) - 1

    @property
    def vocab_size(self) -> int:
        return len(self._id_to_word)

    @property
    def vocab(self) -> tuple[str, ...]:
        """Every token, indexed by id."""
        return self._id_to_word

    def encode(self, texts: Sequence[str], context_length: int, truncate: bool = False) -> np.ndarray:
        """Token ids int32 [N, L] with L = context_length; unknown words become unk.

        A text needing more than L tokens (sot and eot included) raises ValueError, unless `truncate`,
        which keeps sot and the first L - 2 words and puts eot in the last slot, as OpenCLIP does.
        A single string is encoded as a batch of one.
        """
        if isinstance(texts, str):
            texts = [texts]
        if int(context_length) != context_length or context_length < 2:
            raise ValueError(f"context_length={context_length!r}; expected an integer >= 2 (sot and eot)")
        ids = np.full((len(texts), context_length), self.pad_id, dtype=np.int32)
        for row, text in enumerate(texts):
            tokens = [self._word_to_id.get(word, self.unk_id) for word in split_words(text)]
            tokens = [self.sot_id, *tokens, self.eot_id]
            if len(tokens) > context_length:
                if not truncate:
                    raise ValueError(
                        f"text {text!r} needs {len(tokens)} tokens, more than context_length="
                        f"{context_length}; shorten it, raise the limit or pass truncate=True"
                    )
                tokens = tokens[: context_length - 1] + [self.eot_id]
            ids[row, : len(tokens)] = tokens
        return ids

    def decode(self, ids: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
        """Texts of int [N, L] token ids: sot is skipped, and decoding stops at eot or pad."""
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"ids have shape {ids.shape}; expected [N, L]")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(
                f"token ids span {ids.min()}..{ids.max()}; expected 0..{self.vocab_size - 1}"
            )
        texts = []
        for row in ids:
            words = []
            for token in row.tolist():
                if token in (self.eot_id, self.pad_id):
                    break
                if token != self.sot_id:
                    words.append(self._id_to_word[token])
            texts.append(_join(words))
        return texts

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size})"
