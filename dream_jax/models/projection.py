"""StableRep-style image projection: Linear-BN-ReLU-Linear-BN-ReLU-Linear (`post_mlp_stablerep`).

BatchNorm statistics are taken over the whole (global) batch: under jit with a sharded batch the mean over the
batch axis is a global reduction, the equivalent of the authors' SyncBatchNorm. Running statistics (momentum
0.1 in torch = 0.9 here, eps 1e-5) are used at inference, e.g. by the SAD critic. As in torch, the batch is
normalised with its biased variance but the running variance is updated with the unbiased one (x n / (n - 1));
flax's nn.BatchNorm would update it with the biased one.

Dimension letters: B batch, D encoder width, P hidden (1024), E embedding dim (256).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from dream_jax.models.transformer import dense


class BatchNorm(nn.Module):
    """torch's BatchNorm1d over [B, P] in float32, with flax nn.BatchNorm's variable names and shapes.

    params `scale`, `bias` and batch_stats `mean`, `var` [P] keep checkpoints, the export layout and the
    parameter counts of nn.BatchNorm. `momentum` is flax's (the weight of the old running value).
    """

    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, train):
        n, features = x.shape
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (features,),
                           jnp.float32)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (features,),
                          jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        x = x.astype(jnp.float32)
        if not train:
            mean, var = ra_mean.value, ra_var.value
        else:
            mean, var = jnp.mean(x, axis=0), jnp.var(x, axis=0)
            if not self.is_initializing():
                if n < 2:  # torch refuses too; n / (n - 1) would write NaN into the running variance.
                    raise ValueError(f"BatchNorm needs more than 1 sample per channel in training, got {n}")
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var * (n / (n - 1))
        return (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias


class ImageProjection(nn.Module):
    """Pooled encoder features [B, D] -> image embedding [B, E] (not normalised)."""

    hidden_dim: int
    embed_dim: int

    @nn.compact
    def __call__(self, x, train=False):
        x = x.astype(jnp.float32)
        x = nn.relu(BatchNorm(name="bn1")(dense(self.hidden_dim, ("embed", "mlp"), "layer1", jnp.float32)(x), train))
        x = nn.relu(BatchNorm(name="bn2")(dense(self.hidden_dim, ("mlp", "mlp_out"), "layer2", jnp.float32)(x), train))
        return dense(self.embed_dim, ("mlp", "proj"), "layer3", jnp.float32)(x)
