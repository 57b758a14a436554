"""Mixed-precision policies, selected by name with `model.precision`.

Under every policy parameters and optimiser state (the master weights and Adam moments) are float32, and so are
LayerNorm statistics, attention logits and softmax (jax.nn.dot_product_attention), pooling, contrastive logits,
diffusion-head outputs, diffusion targets and losses. A policy sets the compute dtype: that of the matmuls and the
activations between them, in DREAM and in the frozen T5 and SD-VAE (maxtext's `dtype` beside
`weight_dtype=float32`). tests/test_precision.py checks each of these.
"""

import jax.numpy as jnp

# model.precision -> compute dtype.
POLICIES = {
    "float32": jnp.dtype(jnp.float32),
    "bfloat16": jnp.dtype(jnp.bfloat16),  # float32 master weights, bfloat16 matmuls
}


def compute_dtype(name):
    """The compute dtype of a `model.precision` setting; ValueError naming the choices otherwise."""
    if name not in POLICIES:
        raise ValueError(f"model.precision={name!r}: expected one of {', '.join(map(repr, POLICIES))}")
    return POLICIES[name]
