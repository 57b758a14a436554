"""StableRep-style image projection: Linear-BN-ReLU-Linear-BN-ReLU-Linear (`post_mlp_stablerep`).

BatchNorm statistics are taken over the whole (global) batch: under jit with a sharded batch the mean over the
batch axis is a global reduction, the equivalent of the authors' SyncBatchNorm. Running statistics (momentum
0.1 in torch = 0.9 here, eps 1e-5) are used at inference, e.g. by the SAD critic.

Dimension letters: B batch, D encoder width, P hidden (1024), E embedding dim (256).
"""

import flax.linen as nn
import jax.numpy as jnp

from dream_jax.models.transformer import dense


class ImageProjection(nn.Module):
    """Pooled encoder features [B, D] -> image embedding [B, E] (not normalised)."""

    hidden_dim: int
    embed_dim: int

    @nn.compact
    def __call__(self, x, train=False):
        def bn(name):
            return nn.BatchNorm(
                use_running_average=not train,
                momentum=0.9,
                epsilon=1e-5,
                dtype=jnp.float32,
                scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
                name=name,
            )

        x = x.astype(jnp.float32)
        x = nn.relu(bn("bn1")(dense(self.hidden_dim, ("embed", "mlp"), "layer1", jnp.float32)(x)))
        x = nn.relu(bn("bn2")(dense(self.hidden_dim, ("mlp", "mlp_out"), "layer2", jnp.float32)(x)))
        return dense(self.embed_dim, ("mlp", "proj"), "layer3", jnp.float32)(x)
