"""The train state and its optimiser: shapes, shardings and creation, shared by training, sampling and export.

The optimiser is the authors' recipe: global-norm clip, AdamW(0.9, 0.95) with their weight-decay groups, linear
warmup from 0 then constant (cosine as an option), and an EMA of the params kept in the state. Shapes come first
(jax.eval_shape); the state is then created directly into the shardings that the modules' logical names give.
"""

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import ml_collections
import optax

from dream_jax import sharding
from dream_jax.models.dream import DREAM


# ----------------------------------------------------------------------------------------------- optimiser
def total_steps(config):
    return config.total_steps if config.total_steps > 0 else int(config.num_epochs * config.steps_per_epoch)


def learning_rate(config):
    """Linear warmup from 0 (per step, as MAR's per-iteration schedule), then constant or cosine to 0."""
    o = config.optim
    peak = o.base_lr * config.batch_size / 256
    warmup = max(1, int(o.warmup_epochs * config.steps_per_epoch))
    if o.schedule == "constant":
        after = optax.constant_schedule(peak)
    elif o.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, max(1, total_steps(config) - warmup))
    else:
        raise ValueError(f"optim.schedule={o.schedule!r}; expected 'constant' or 'cosine'")
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


# The submodule names of transformer.stack's nn.scan stacks (model.scan_layers): their leaves carry a leading
# `layers` axis, so a block's 1-D norm scale is 2-D there.
SCANNED_STACKS = ("encoder_blocks", "decoder_blocks", "text_aligner", "transformer_resblocks")


def decay_mask(params):
    """True where weight decay applies: the authors exclude biases, 1-D tensors (norms) and the DiffLoss MLP.

    0-D `logit_scale` is decayed, as in the authors' optimizer groups. A tensor counts by its per-block rank, so
    scanned and unrolled blocks decay the same parameters.
    """
    def decayed(path, leaf):
        names = [getattr(k, "key", None) for k in path]
        per_block_ndim = jnp.ndim(leaf) - any(n in SCANNED_STACKS for n in names)
        return not ("bias" in names or "diffloss_net" in names or per_block_ndim == 1)

    return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(config):
    """Global-norm clip, then AdamW with decay_mask's groups; with optim.flat_update, each group's moments as one
    flat vector (flat_adamw)."""
    o = config.optim

    def adamw(weight_decay, mask=None):
        return optax.adamw(learning_rate(config), b1=o.b1, b2=o.b2, weight_decay=weight_decay, mask=mask)

    inner = flat_adamw(adamw, o.weight_decay) if o.flat_update else adamw(o.weight_decay, decay_mask)
    return optax.chain(optax.clip_by_global_norm(o.grad_clip), inner)


def flat_adamw(adamw, weight_decay):
    """AdamW on two flat vectors, the decayed params' and the rest's (decay_mask), instead of leaf by leaf.

    Adam and the decay are elementwise, so every param gets the update of `adamw(weight_decay, decay_mask)` up to
    float rounding (XLA vectorises one long vector unlike many short ones: a few ULPs of the update a step,
    tests/test_optimizer.py); what changes is the program, a few ops on two vectors instead of a dozen per leaf:
    the tiny train step compiles in 0.61x the time with the test suite's fast-compile XLA flags, 0.92x with XLA's
    defaults (docs/BENCHMARKS.md, "optim.flat_update"). The moments are replicated whatever the mesh: for small
    models. `adamw(weight_decay)`: the optax transformation of one group.
    """
    def labels(params):
        return jax.tree.map(lambda decayed: "decay" if decayed else "rest", decay_mask(params))

    return optax.partition({"decay": optax.flatten(adamw(weight_decay)), "rest": optax.flatten(adamw(0.0))}, labels)


def global_norm(config, tree):
    """optax.tree.norm, or with optim.flat_update the norm of the tree raveled into one vector: one reduction
    instead of one per leaf, the same value up to float rounding (the logged param norm; the clip keeps optax's)."""
    if not config.optim.flat_update:
        return optax.tree.norm(tree)
    return jnp.linalg.norm(jax.flatten_util.ravel_pytree(tree)[0])


# --------------------------------------------------------------------------------------------------- state
@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any


def dummy_inputs(config, batch=1):
    m = config.model
    return (
        jnp.zeros((batch, m.seq_len, m.token_dim), jnp.float32),
        jnp.zeros((batch, m.seq_len), bool),
        jnp.zeros((batch, m.text_tower.context_length), jnp.int32),
        jnp.zeros((batch, m.cond_len, m.cond_dim), jnp.float32),
    )


def abstract_variables(config):
    """DREAM's {'params', 'batch_stats'} as ShapeDtypeStructs (unboxed; nothing allocated)."""
    # The key is made inside the trace: a concrete one would start a backend (libtpu probes for a TPU) for shapes.
    return jax.eval_shape(lambda: nn.unbox(DREAM(config.model).init({"params": jax.random.key(0)},
                                                                     *dummy_inputs(config))))


def _boxed_state(config, rng):
    variables = DREAM(config.model).init({"params": rng}, *dummy_inputs(config))
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables["batch_stats"],
        opt_state=make_optimizer(config).init(params),
        ema_params=params,
    )


def _abstract_boxed_state(config):
    # From a plain dict: ConfigDict equality also compares lock states (see generate.freeze).
    return _abstract_boxed_state_of(ml_collections.FrozenConfigDict(config.to_dict()))


@functools.lru_cache(maxsize=8)
def _abstract_boxed_state_of(config):
    # Cached by the whole (frozen, hashable) config: a training start asks for it three times (the restore target,
    # the created state's and the step's shardings), each a trace of the model's init.
    return jax.eval_shape(functools.partial(_boxed_state, config), jax.random.key(0))


def state_shardings(config, mesh):
    """NamedShardings of the (unboxed) train state, from the modules' logical axis names."""
    return sharding.logical_shardings(_abstract_boxed_state(config), mesh, config)


def abstract_state(config, mesh):
    """The state as ShapeDtypeStructs carrying their shardings: the restore target; allocates nothing."""
    boxed = _abstract_boxed_state(config)  # one trace of the model's init for the shapes and the shardings
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), nn.unbox(boxed),
                        sharding.logical_shardings(boxed, mesh, config))


def create_state(config, mesh):
    """A freshly initialised state, created directly in its shardings (never whole on one device)."""
    shardings = state_shardings(config, mesh)
    # No mesh context here: DenseGeneral initialises its 2-D kernel view, which a logical constraint would reject.
    init = jax.jit(lambda r: nn.unbox(_boxed_state(config, r)), out_shardings=shardings)
    return init(jax.random.key(config.seed))
