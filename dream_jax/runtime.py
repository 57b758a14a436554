"""What every job (train, sample, eval, export, compile) runs on: the mesh, the text tokenizers and the frozen
components placed on the mesh, built one way for all of them, plus restoring a workdir's newest variables.

The frozen components are sharded by sharding.frozen_shardings in every job (big leaves split over `fsdp`,
gathered per layer under jit), so sampling and evaluation hold T5-Large / the VAE as training does.
"""

import dataclasses
from typing import Any

import jax

from dream_jax import checkpoint as checkpoint_lib
from dream_jax import frozen as frozen_lib
from dream_jax import sharding
from dream_jax import state as state_lib
from dream_jax.data import tokenizers as tokenizers_lib


@dataclasses.dataclass(frozen=True)
class Runtime:
    """config; mesh; tokenizers (data.tokenizers.TextTokenizers; None when compiling); frozen (frozen.Frozen,
    placed with frozen_shardings: arrays, or ShapeDtypeStructs carrying the shardings when compiling)."""

    config: Any
    mesh: Any
    tokenizers: Any
    frozen: Any


def create(config, mesh=None, tokenizers=None):
    """The Runtime of a job on this process's devices: the config's mesh unless given, the config's tokenizers
    unless given, the frozen components loaded from local files and placed."""
    mesh = sharding.make_mesh(config) if mesh is None else mesh
    tokenizers = tokenizers_lib.make_tokenizers(config) if tokenizers is None else tokenizers
    frozen = frozen_lib.load(config, tokenizers)
    return Runtime(config, mesh, tokenizers, jax.device_put(frozen, sharding.frozen_shardings(frozen, mesh)))


def abstract(config, mesh, t5, vae_config):
    """The Runtime of `--mode=compile` over `mesh` (e.g. a topology's compile-only devices): no tokenizers, the
    frozen components as ShapeDtypeStructs of the given module configs with their shardings; nothing is read."""
    frozen = frozen_lib.abstract(config, t5, vae_config)
    placed = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), frozen,
                          sharding.frozen_shardings(frozen, mesh))
    return Runtime(config, mesh, None, placed)


def restore_state(config, workdir, mesh):
    """(train state, step) of the newest checkpoint of `workdir`, restored into the state's shardings on `mesh`."""
    return checkpoint_lib.restore_newest(workdir, config, state_lib.abstract_state(config, mesh))


def restore_variables(rt, workdir, use_ema):
    """({'params' (EMA if use_ema), 'batch_stats'}, step) of the newest checkpoint, on the runtime's mesh."""
    state, step = restore_state(rt.config, workdir, rt.mesh)
    return state_variables(state, use_ema), step


def state_variables(state, use_ema):
    """A train state's {'params' (EMA or raw), 'batch_stats'}, as inference takes them."""
    return {"params": state.ema_params if use_ema else state.params, "batch_stats": state.batch_stats}
