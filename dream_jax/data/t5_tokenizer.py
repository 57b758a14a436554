"""T5's SentencePiece tokenizer, read from a local spiece.model, padded and truncated like DREAM's.

DREAM feeds T5-Large 128 tokens per caption, padded to `max_length=128` with truncation (PAPER.md §1.3). The
`sentencepiece` library (T5's own tokenizer, maintained by Google) does all the segmentation; this file only adds
what the HF T5 tokenizer adds around it: the eos token `</s>` after the pieces (kept when truncating, so a long
caption becomes its first L - 1 pieces + eos), padding with `<pad>` (id 0) and the attention mask.

Known difference from the HF tokenizer: text is never searched for special-token markup, so a caption that
literally contains `</s>` or `<extra_id_0>` is segmented as characters instead of becoming those ids. That keeps
caption text from injecting control tokens; no real caption is expected to contain them. Where two segmentations
score exactly the same (e.g. a long run of one character covered by pieces of two lengths), HF's Rust Unigram
may break the tie differently; sentencepiece is T5's own implementation, as HF's original slow tokenizer was.

Dimension letters: N texts, L context length (tokens).
"""

import os
from collections.abc import Sequence

import numpy as np
import sentencepiece

CONTEXT_LENGTH = 128
_SOURCE = (
    "Download spiece.model by hand from https://huggingface.co/google-t5/t5-large (the T5 checkpoint "
    "directory holds it); dream_jax never downloads."
)


class T5Tokenizer:
    """texts -> (ids int32 [N, L], mask int32 [N, L]): pieces, eos, then pad; mask is 1 on pieces and eos."""

    def __init__(self, spiece_path: str, context_length: int = CONTEXT_LENGTH):
        if not os.path.isfile(spiece_path):
            raise FileNotFoundError(f"T5 SentencePiece model {spiece_path!r} not found. {_SOURCE}")
        if context_length < 1:
            raise ValueError(f"context_length={context_length}; expected >= 1 (room for eos)")
        self._sp = sentencepiece.SentencePieceProcessor(model_file=spiece_path)
        self.context_length = int(context_length)
        self.pad_id = self._sp.pad_id()
        self.eot_id = self._sp.eos_id()
        if self.pad_id < 0 or self.eot_id < 0:
            raise ValueError(
                f"{spiece_path}: pad id {self.pad_id} / eos id {self.eot_id}; a T5 SentencePiece model "
                "defines both (<pad> = 0, </s> = 1)"
            )
        # Ids this tokenizer can emit are < vocab_size; T5's embedding table is larger (sentinels and padding).
        self.vocab_size = self._sp.get_piece_size()

    def encode(self, texts: Sequence[str] | str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, mask), each int32 [N, L]; a single string is a batch of one."""
        if isinstance(texts, str):
            texts = [texts]
        pieces = self._sp.encode(list(texts), out_type=int)
        ids = np.full((len(texts), self.context_length), self.pad_id, np.int32)
        mask = np.zeros((len(texts), self.context_length), np.int32)
        for row, p in enumerate(pieces):
            tokens = [*p[: self.context_length - 1], self.eot_id]
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        return ids, mask

    def __repr__(self) -> str:
        return f"T5Tokenizer(vocab_size={self.vocab_size}, context_length={self.context_length})"
