"""OpenCLIP's byte-level BPE tokenizer (the CLIP text tower's), read from a local bpe vocab file.

Behaviour matches `open_clip.SimpleTokenizer` with its defaults (clean='lower', context 77):
  1. clean: `ftfy.fix_text`, `html.unescape` twice, collapse whitespace runs to one space, strip, lower-case;
  2. split with OpenCLIP's regex (contractions, letter runs, single digits, punctuation runs);
  3. byte-level BPE with the merges of `bpe_simple_vocab_16e6.txt.gz`, `</w>` marking the end of each word;
  4. [sot] + ids + [eot], cut to the context with eot forced into the last slot, padded with 0.

Who does what, and why: ftfy (maintained; OpenCLIP uses it) does the text fixing, and HF `tokenizers` (Rust,
maintained) does steps 2-3 with the pieces transformers' CLIP tokenizer uses (regex Split, ByteLevel, BPE with
`</w>`), minus its normaliser: step 1 runs in Python so it is OpenCLIP's cleaning exactly. Only the vocabulary
layout (bytes, bytes + `</w>`, merges, then the two specials, as OpenCLIP lays it out) and the framing of step 4
are written here: open_clip itself needs torch, and neither library builds OpenCLIP's id layout from the merges
file.

Known difference from OpenCLIP: the literal strings `<start_of_text>` / `<end_of_text>` inside a caption become
the special ids wherever they occur, while OpenCLIP's regex misses them when punctuation directly precedes them
(e.g. `!<end_of_text>`, where its punctuation run swallows the `<`). No real caption is expected to hit this.

Dimension letters: N texts, L context length (tokens).
"""

import gzip
import html
import os
from collections.abc import Sequence

import ftfy
import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers

CONTEXT_LENGTH = 77
SOT, EOT = "<start_of_text>", "<end_of_text>"
# OpenCLIP reads this many merges from the first lines after the header of bpe_simple_vocab_16e6.txt.gz.
_NUM_MERGES = 49152 - 256 - 2
_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
SOURCE = (
    "Get bpe_simple_vocab_16e6.txt.gz by hand from the open_clip package (src/open_clip/ in "
    "https://github.com/mlfoundations/open_clip) or OpenAI's CLIP repository; dream_jax never downloads."
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map of the 256 byte values to printable characters (fixes the id order)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    codes = printable[:]
    shifted = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + shifted)
            shifted += 1
    return {b: chr(c) for b, c in zip(printable, codes)}


def clean(text: str) -> str:
    """OpenCLIP's 'lower' cleaning: fix unicode, unescape HTML, collapse whitespace, lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


def read_merges(path: str) -> list[tuple[str, str]]:
    """The merge pairs OpenCLIP uses from a bpe vocab file (gzip or plain text, first line a header)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CLIP bpe vocab file {path!r} not found. {SOURCE}")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    lines = raw.decode("utf-8").split("\n")[1 : _NUM_MERGES + 1]
    merges = []
    for number, line in enumerate(lines, start=2):
        parts = line.split()
        if not parts:
            continue  # a short vocab file's trailing newline; the real file has none in this range
        if len(parts) != 2:
            raise ValueError(f"{path}: line {number} is {line!r}; expected a merge 'left right'")
        merges.append((parts[0], parts[1]))
    return merges


class ClipTokenizer:
    """texts -> int32 [N, L] ids laid out as [sot, tokens..., eot, 0...], as OpenCLIP's tokenizer returns them."""

    pad_id = 0

    def __init__(self, bpe_path: str, context_length: int = CONTEXT_LENGTH):
        if context_length < 2:
            raise ValueError(f"context_length={context_length}; expected >= 2 (sot and eot)")
        self.context_length = int(context_length)
        merges = read_merges(bpe_path)
        symbols = list(bytes_to_unicode().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        # dict(zip(...)) like OpenCLIP, so a string that appears twice keeps its last id there and here.
        encoder = dict(zip(vocab, range(len(vocab))))
        self.vocab_size = len(vocab)
        self.sot_id, self.eot_id = encoder[SOT], encoder[EOT]
        tokenizer = Tokenizer(models.BPE(vocab=encoder, merges=merges, end_of_word_suffix="</w>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_SPLIT), behavior="removed", invert=True),
                # The split above already made the words; the byte map is all that is left to do.
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tokenizer.add_special_tokens([AddedToken(SOT, special=True), AddedToken(EOT, special=True)])
        self._tokenizer = tokenizer

    def encode(self, texts: Sequence[str] | str, truncate: bool = True) -> np.ndarray:
        """int32 [N, L]; a text longer than L - 2 tokens is cut and its last slot set to eot (with
        `truncate=False` it is a ValueError naming the text instead)."""
        if isinstance(texts, str):
            texts = [texts]
        encodings = self._tokenizer.encode_batch([clean(t) for t in texts], add_special_tokens=False)
        ids = np.full((len(texts), self.context_length), self.pad_id, np.int32)
        for row, enc in enumerate(encodings):
            if not truncate and len(enc.ids) > self.context_length - 2:
                raise ValueError(f"text {texts[row]!r} needs {len(enc.ids) + 2} tokens, more than the context "
                                 f"length {self.context_length}")
            tokens = [self.sot_id, *enc.ids[: self.context_length - 2], self.eot_id]
            ids[row, : len(tokens)] = tokens
        return ids

    def __repr__(self) -> str:
        return f"ClipTokenizer(vocab_size={self.vocab_size}, context_length={self.context_length})"
