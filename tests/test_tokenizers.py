"""T5 SentencePiece and OpenCLIP BPE tokenizers agree with reference implementations on varied text.

Both vocabularies are trained here on a small corpus (nothing is downloaded). T5 is compared with transformers'
T5Tokenizer built from the same spiece.model; CLIP with OpenCLIP's SimpleTokenizer algorithm, written out below
from the published code (open_clip itself needs torch and torchvision).

Dimension letters: N texts, L context length.
"""

import gzip
import html
import io
import itertools
import random
from collections import Counter

import numpy as np
import pytest

import clip_reference
from dream_jax.data.clip_tokenizer import EOT, SOT, ClipTokenizer
from dream_jax.data.t5_tokenizer import T5Tokenizer

WORDS = (  # noqa: SIM905 (a sentence reads better than a list of 35 quoted words)
    "a photo of the cat dog on red blue green big small table under over painting sunset beach city street "
    "man woman child running jumping with and in at near two three vintage poster illustration"
).split()
PIECES = [
    "café", "naïve", "Straße", "東京タワー", "北京", "😀🐱", "Ελληνικά", "ΟΔΟΣ", "İstanbul", "ﬁne", "Ｆｕｌｌ",
    "e\u0301", "zero\u200bwidth", "cafÃ©", "don’t", "“quoted”", "&amp;", "&lt;b&gt;bold&lt;/b&gt;", "&amp;amp;",
    "Ⅻ", "①", "x²", "١٢٣", "नमस्ते", "한국어", "—", "...", "!!!", "$19.99", "50%", "it's", "they're", "I'll",
    "we've", "he'd", "I'm", "can't", "DOG'S", "2019", "3D", "#hashtag", "@user", "http://x.io/a?b=c", "(1/2)",
]
SEPARATORS = [" ", "  ", ", ", "\n", "\t", " \u00a0", ". "]
EDGE = [
    "", " ", "\n\t ", "a", "A", "!", "1", "  leading", "trailing  ", "UPPER lower MiXeD", "a\u3000b",
    "x" * 300, "ab" * 80, " ".join(["word"] * 120), "\u200b", "🐱", "é", "ＡＢＣ", "tab\tsep\nline",
]


def _texts(n, seed):
    """EDGE plus n random captions mixing ASCII words and unicode pieces; every 10th is long (100-200 words)."""
    rng = random.Random(seed)
    texts = list(EDGE)
    for i in range(n):
        length = rng.randint(100, 200) if i % 10 == 0 else rng.randint(1, 20)
        out = ""
        for _ in range(length):
            word = rng.choice(PIECES) if rng.random() < 0.3 else rng.choice(WORDS)
            word = word.capitalize() if rng.random() < 0.1 else word
            out += word + rng.choice(SEPARATORS)
        texts.append(out if rng.random() < 0.5 else out.strip())
    return texts


# ---------------------------------------------------------------------------------------------------------------
# T5


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    spm = pytest.importorskip("sentencepiece")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        # Captions only: EDGE's long single-character runs would teach pieces whose equal-score segmentations
        # sentencepiece and HF's Unigram break differently (a tie, not a bug in either).
        sentence_iterator=iter(_texts(3000, seed=1)[len(EDGE) :]),
        model_writer=model,
        vocab_size=400,
        hard_vocab_limit=False,
        model_type="unigram",
        # T5's layout: pad 0, eos 1, unk 2, no bos.
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        minloglevel=2,
    )
    path = tmp_path_factory.mktemp("t5tok") / "spiece.model"
    path.write_bytes(model.getvalue())
    return path


@pytest.mark.parametrize("context_length", [128, 8])
def test_t5_matches_transformers(spiece, context_length):
    transformers = pytest.importorskip("transformers")
    ref = transformers.T5Tokenizer.from_pretrained(str(spiece.parent))
    ours = T5Tokenizer(str(spiece), context_length=context_length)
    texts = _texts(250, seed=2)
    ids, mask = ours.encode(texts)
    expected = ref(texts, max_length=context_length, padding="max_length", truncation=True)
    assert ids.dtype == np.int32 and ids.shape == (len(texts), context_length)
    np.testing.assert_array_equal(ids, np.array(expected["input_ids"]))
    np.testing.assert_array_equal(mask, np.array(expected["attention_mask"]))
    assert (ids == ours.eot_id).any(axis=1).all(), "every row ends with eos"
    assert (ids[:, -1] != ours.pad_id).any(), "some captions are long enough to be truncated"
    assert (ids == 2).any(), "some characters are unknown to the tiny vocabulary"


def test_t5_attributes_and_markup(spiece):
    tok = T5Tokenizer(str(spiece))
    assert (tok.context_length, tok.pad_id, tok.eot_id) == (128, 0, 1)
    assert tok.vocab_size >= 100
    ids, mask = tok.encode("a cat")
    assert ids.shape == mask.shape == (1, 128)
    # Documented difference from HF: markup in the text is not turned into control ids.
    ids, mask = tok.encode(["a </s> cat"])
    assert list(ids[0]).count(tok.eot_id) == 1 and ids[0, mask[0].sum() - 1] == tok.eot_id
    with pytest.raises(FileNotFoundError, match="google-t5/t5-large"):
        T5Tokenizer(str(spiece.parent / "missing.model"))


# ---------------------------------------------------------------------------------------------------------------
# CLIP: OpenCLIP's SimpleTokenizer, written out from its published algorithm as the reference.


class OpenClipReference:
    """open_clip.tokenizer.SimpleTokenizer with clean='lower' (its default)."""

    def __init__(self, bpe_path, regex):
        import ftfy

        self.ftfy, self.regex = ftfy, regex
        self.byte_encoder = clip_reference.byte_symbols()
        with gzip.open(bpe_path) as f:
            merges = f.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
        merges = [tuple(m.split()) for m in merges if m]
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = {SOT: SOT, EOT: EOT}
        self.pat = regex.compile(
            f"{SOT}|{EOT}" + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
        )

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(itertools.pairwise(word))
            first, second = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if (first, second) not in self.bpe_ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        self.cache[token] = " ".join(word)
        return self.cache[token]

    def clean(self, text):
        text = html.unescape(html.unescape(self.ftfy.fix_text(text))).strip()
        return " ".join(text.split()).strip().lower()

    def words(self, text):
        return [
            "".join(self.byte_encoder[b] for b in t.encode("utf-8")) for t in self.regex.findall(self.pat, text)
        ]

    def __call__(self, texts, context_length=77):
        sot, eot = self.encoder[SOT], self.encoder[EOT]
        result = np.zeros((len(texts), context_length), np.int64)
        for i, text in enumerate(texts):
            ids = [self.encoder[t] for w in self.words(self.clean(text)) for t in self.bpe(w).split(" ")]
            tokens = [sot] + ids + [eot]
            if len(tokens) > context_length:
                tokens = tokens[:context_length]
                tokens[-1] = eot
            result[i, : len(tokens)] = tokens
        return result


def _train_merges(words, num_merges):
    """Plain BPE training: repeatedly merge the most frequent adjacent pair (ties broken by the pair itself)."""
    vocab = Counter(tuple(w[:-1]) + (w[-1] + "</w>",) for w in words)
    merges = []
    for _ in range(num_merges):
        pairs = Counter()
        for word, count in vocab.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        merged = Counter()
        for word, count in vocab.items():
            out, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        vocab = merged
    return merges


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    regex = pytest.importorskip("regex")
    path = tmp_path_factory.mktemp("cliptok") / "bpe_tiny_vocab.txt.gz"
    path.write_bytes(gzip.compress(b"#version: 0.2\n"))
    bootstrap = OpenClipReference(str(path), regex)  # no merges yet: only its cleaning and split are used
    words = [w for text in _texts(800, seed=3) for w in bootstrap.words(bootstrap.clean(text))]
    merges = _train_merges(words, num_merges=300)
    path.write_bytes(gzip.compress(("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n").encode()))
    return path, OpenClipReference(str(path), regex)


@pytest.mark.parametrize("context_length", [77, 12])
def test_clip_matches_openclip_algorithm(clip_files, context_length):
    path, ref = clip_files
    ours = ClipTokenizer(str(path), context_length=context_length)
    texts = _texts(250, seed=4) + ["a <end_of_text> b", "<start_of_text>", "x <END_OF_TEXT>"]
    ids = ours.encode(texts)
    assert ids.dtype == np.int32 and ids.shape == (len(texts), context_length)
    expected = ref(texts, context_length)
    for row, text in enumerate(texts):
        assert list(ids[row]) == list(expected[row]), f"text {text!r}"
    assert (ids[:, -1] == ours.eot_id).any(), "some captions are truncated with eot last"
    assert len(ref.bpe_ranks) == 300 and max(len(t) for t in ref.cache.values()) > 10, "merges are exercised"


def test_clip_attributes_and_errors(clip_files, tmp_path):
    path, ref = clip_files
    tok = ClipTokenizer(str(path))
    assert tok.context_length == 77 and tok.pad_id == 0
    assert tok.vocab_size == 512 + 300 + 2 == len(ref.encoder)
    assert (tok.sot_id, tok.eot_id) == (ref.encoder[SOT], ref.encoder[EOT]) == (812, 813)
    np.testing.assert_array_equal(tok.encode(""), [[812, 813] + [0] * 75])
    with pytest.raises(FileNotFoundError, match="bpe_simple_vocab_16e6"):
        ClipTokenizer(str(tmp_path / "missing.txt.gz"))
    bad = tmp_path / "bad.txt"
    bad.write_text("#version: 0.2\na b c\n")
    with pytest.raises(ValueError, match="line 2"):
        ClipTokenizer(str(bad))
