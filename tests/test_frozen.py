"""frozen.load: the tiny config's frozen components are made by whole compiled programs, not op by op (every
training, sampling and evaluation process starts with it: the T5 init op by op compiled ~50 programs, ~6 s), and
its random-init T5 keeps each word recognisable in its features, whatever the sentence around it.

Dimension letters: N captions, L tokens, D width, C classes of an attribute.
"""

import jax
import numpy as np
import pytest

import train_helpers as th
from configs import dream_tiny
from dream_jax import frozen as frozen_lib
from dream_jax.data import synthetic
from dream_jax.data import tokenizers as tokenizers_lib


def test_tiny_text_encoder_loads_in_two_compiled_programs():
    # A first load makes what does not depend on the text encoder's shapes (the PRNG key, the PCA's transfers);
    # the second one's text encoder has shapes no other test uses, so no cached program (eager ops included) serves.
    config = th.tiny_config(text__tiny_t5__d_ff=88, text__tiny_t5__seed=7)
    tokenizers = tokenizers_lib.make_tokenizers(config)  # the T5's width does not change them
    frozen_lib.load(th.tiny_config(text__tiny_t5__d_ff=72), tokenizers)
    with th.backend_compiles() as compiles:
        frozen = frozen_lib.load(config, tokenizers)
    assert len(compiles) <= 2, f"{len(compiles)} compilations"  # the init and the empty prompt's features
    again = frozen_lib.load(config, tokenizers)  # the fixed seed: the same weights
    th.assert_trees_equal(frozen.cond, again.cond)
    ids, mask = tokenizers.cond_ids([""])
    empty = frozen_lib.cond_features(config, frozen, np.asarray(ids), np.asarray(mask))[0]
    np.testing.assert_allclose(frozen.empty_cond, empty, atol=1e-6)
    assert frozen.cond["params"]["shared"]["embedding"].shape[0] == config.model.text_tower.vocab_size
    assert jax.tree.leaves(frozen.cond)[0].dtype == np.float32


@pytest.mark.parametrize("attribute", ["shape", "color"])
def test_tiny_t5_word_features_survive_unseen_templates(attribute):
    """The generator reads the prompt through the frozen T5's features: each shape / colour word's feature must
    point to that word in sentences of every template, the held-out ones (unseen word orders, e.g. "{size}
    {shape}, {color}, {position}") included. Nearest of the C word prototypes (the word's mean feature over the
    training templates) by cosine, best token of the caption: all of the training combinations right, for every
    template. With Flax's default init of the same T5 the colour words scored 0.43-0.65 (the embedding, std
    D^-1/2, drowned by the blocks' mixing of the sentence)."""
    config = dream_tiny.get_config()
    tokenizers = tokenizers_lib.make_tokenizers(config)
    frozen = frozen_lib.load(config, tokenizers)
    rows = synthetic.split_combinations("train")
    column = synthetic.ATTRIBUTES.index(attribute)
    words = np.asarray(tokenizers.cond_ids(synthetic.class_names(attribute))[0])[:, 1]  # after the start token

    def features(template):  # [N, L, D] unit vectors, ids [N, L]
        ids, mask = tokenizers.cond_ids([synthetic.caption(*row, template) for row in rows])
        f = np.asarray(frozen_lib.cond_features(config, frozen, np.asarray(ids), np.asarray(mask)))
        return f / np.linalg.norm(f, axis=-1, keepdims=True), np.asarray(ids)

    per_template = [features(t) for t in range(len(synthetic.TEMPLATES))]
    train = [per_template[t] for t in synthetic.split_templates("train")]
    prototypes = np.stack([np.concatenate([f[ids == w] for f, ids in train]).mean(0) for w in words])  # [C, D]
    for template, (f, _) in enumerate(per_template):
        best = np.einsum("nld,cd->ncl", f, prototypes).max(-1).argmax(-1)
        accuracy = float(np.mean(best == rows[:, column]))
        assert accuracy == 1.0, f"template {template}: {attribute} word found in {accuracy:.2f} of the captions"
