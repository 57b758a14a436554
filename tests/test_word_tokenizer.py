"""Tests of the word-level tokenizer of the tiny text towers (dream_jax.data.word_tokenizer).

Dimension letters: N texts, L context length.
"""

import numpy as np
import pytest

from dream_jax.data import synthetic
from dream_jax.data.word_tokenizer import WordTokenizer, split_words

CONTEXT = 16


@pytest.fixture(scope="module")
def tokenizer():
    return WordTokenizer()


def _all_template_captions():
    rng = np.random.default_rng(0)
    captions = []
    for template in range(len(synthetic.TEMPLATES)):
        for position in range(len(synthetic.POSITIONS)):
            shape, color, size = rng.integers(4), rng.integers(7), rng.integers(2)
            captions.append(synthetic.caption(shape, color, position, size, template))
    return captions


def test_round_trip_on_captions(tokenizer):
    captions = _all_template_captions()
    ids = tokenizer.encode(captions, CONTEXT)
    assert ids.shape == (len(captions), CONTEXT) and ids.dtype == np.int32
    assert not (ids == tokenizer.unk_id).any()
    assert tokenizer.decode(ids) == captions


def test_vocabulary_covers_every_caption_and_prompt(tokenizer):
    prompts = [synthetic.shape_color_prompt(s, c) for s, c in synthetic.shape_color_classes()]
    ids = tokenizer.encode(prompts, CONTEXT)
    assert not (ids == tokenizer.unk_id).any()
    assert tokenizer.decode(ids) == prompts
    for word in ("circle", "magenta", "center", ",", ":"):
        assert word in tokenizer.vocab


def test_layout_and_eot_is_the_highest_id(tokenizer):
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.sot_id) == (0, 1, 2)
    assert tokenizer.eot_id == tokenizer.vocab_size - 1
    ids = tokenizer.encode(["a red circle in the center"], CONTEXT)[0]
    words = 6
    assert ids[0] == tokenizer.sot_id
    assert ids[words + 1] == tokenizer.eot_id
    assert (ids[words + 2 :] == tokenizer.pad_id).all()
    # The CLIP text tower pools at argmax(ids): that must land on eot.
    assert np.argmax(ids) == words + 1


def test_too_long_text_raises(tokenizer):
    text = "a small red circle at the top left"  # 8 words -> 10 tokens
    assert tokenizer.encode([text], 10).shape == (1, 10)
    with pytest.raises(ValueError, match="top left.*context_length=9"):
        tokenizer.encode([text], 9)


def test_truncate_keeps_sot_and_puts_eot_last(tokenizer):
    text = "a small red circle at the top left"
    ids = tokenizer.encode([text], 5, truncate=True)[0]
    assert ids[0] == tokenizer.sot_id and ids[-1] == tokenizer.eot_id
    assert tokenizer.decode(ids[None]) == ["a small red"]
    np.testing.assert_array_equal(
        tokenizer.encode([text], 12, truncate=True), tokenizer.encode([text], 12)
    )


def test_empty_string(tokenizer):
    ids = tokenizer.encode([""], 4)
    np.testing.assert_array_equal(ids, [[tokenizer.sot_id, tokenizer.eot_id, 0, 0]])
    assert tokenizer.decode(ids) == [""]


def test_unknown_words_case_and_single_string(tokenizer):
    ids = tokenizer.encode("A PURPLE Circle!", 8)
    assert ids.shape == (1, 8)
    assert list(ids[0, :6]) == [
        tokenizer.sot_id,
        tokenizer.vocab.index("a"),
        tokenizer.unk_id,
        tokenizer.vocab.index("circle"),
        tokenizer.unk_id,
        tokenizer.eot_id,
    ]
    assert tokenizer.decode(ids) == ["a <unk> circle <unk>"]
    assert split_words("center: a Red cross, small") == ["center", ":", "a", "red", "cross", ",", "small"]


def test_bad_arguments_raise(tokenizer):
    with pytest.raises(ValueError, match="context_length"):
        tokenizer.encode(["a"], 1)
    with pytest.raises(ValueError, match="token ids"):
        tokenizer.decode([[tokenizer.sot_id, tokenizer.vocab_size]])
    with pytest.raises(ValueError, match="shape"):
        tokenizer.decode([1, 2, 3])
    with pytest.raises(ValueError, match="two words"):
        WordTokenizer(["two words"])


def test_custom_vocabulary():
    tokenizer = WordTokenizer(["b", "a"])
    assert tokenizer.vocab == ("<pad>", "<unk>", "<sot>", "a", "b", "<eot>")
    np.testing.assert_array_equal(tokenizer.encode(["b c"], 5), [[2, 4, 1, 5, 0]])
