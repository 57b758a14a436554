"""frozen.load: the tiny config's frozen components are made by whole compiled programs, not op by op (every
training, sampling and evaluation process starts with it: the T5 init op by op compiled ~50 programs, ~6 s)."""

import jax
import numpy as np

import train_helpers as th
from dream_jax import frozen as frozen_lib
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
