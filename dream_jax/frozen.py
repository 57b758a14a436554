"""The frozen components of DREAM, resolved once: the generator's text encoder (T5 or its tiny stand-in), the
empty-prompt features of classifier-free guidance, and the image tokenizer's weights (SD-VAE, or the PCA patch
projection of the tiny config).

None is trained, so they live in one `Frozen` pytree beside the train state, never in it or its checkpoints.
`load` reads every local file once (config.json and weights) and parses the module configs into the object's
static fields; jitted code receives the object and never touches the disk while tracing. `abstract` builds the
same object as ShapeDtypeStructs from module configs alone (`--mode=compile`, no file needed).

Dimension letters: B batch, Lt cond length, Dt cond width.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dream_jax import tokens
from dream_jax.data import synthetic
from dream_jax.interop import pretrained
from dream_jax.models import patch_pca, precision
from dream_jax.models import patchify as patchify_lib
from dream_jax.models import t5 as t5_lib
from dream_jax.models import vae as vae_lib


@struct.dataclass
class Frozen:
    """cond: the text encoder's variables; empty_cond [Lt, Dt]: its features of the empty prompt; vae: the VAE's
    variables or None; pca: the patch projection (patch_pca.fit) or None. `t5` / `vae_config` are the parsed
    module configs (static: part of the jit cache key, not traced)."""

    cond: dict
    empty_cond: jax.Array
    vae: dict | None
    pca: dict | None
    t5: t5_lib.T5Config = struct.field(pytree_node=False)
    vae_config: vae_lib.VaeConfig | None = struct.field(pytree_node=False)


def tiny_t5_config(config):
    t = config.text.tiny_t5
    return t5_lib.T5Config(d_model=t.d_model, d_kv=t.d_kv, d_ff=t.d_ff, num_layers=t.num_layers,
                           num_heads=t.num_heads, vocab_size=config.model.text_tower.vocab_size)


def module_configs(config):
    """(T5Config, VaeConfig or None) of the config: read from the local config.json files (tiny T5: the config)."""
    t5 = tiny_t5_config(config) if config.text.cond_encoder == "tiny_t5" else pretrained.t5_config(config.text.t5_path)
    vae = pretrained.vae_config(config.tokenizer.vae_path) if config.tokenizer.kind == "vae" else None
    return t5, vae


def load(config, tokenizers):
    """Every frozen component of the config, from local files (or the tiny T5's fixed seed) into a Frozen."""
    if config.text.cond_encoder == "tiny_t5":
        t5 = tiny_t5_config(config)
        ids = jnp.zeros((1, config.model.cond_len), jnp.int32)
        # One jitted program: op by op, the init compiled ~50 small programs (~6 s at every start).
        cond = jax.jit(t5_lib.T5EncoderModel(t5).init)(jax.random.key(config.text.tiny_t5.seed), ids)
    else:
        t5, params = pretrained.load_t5(config.text.t5_path)
        cond = {"params": params}
    _check_width(config, t5)
    vae_config, vae = None, None
    if config.tokenizer.kind == "vae":
        vae_config, params = pretrained.load_vae(config.tokenizer.vae_path)
        vae = {"params": params}
    pca = fit_pca(config) if config.tokenizer.pca_dim else None
    partial = Frozen(cond, jnp.zeros(()), vae, pca, t5, vae_config)
    empty_ids, empty_mask = tokenizers.cond_ids([""])
    empty = jax.jit(lambda f, i, m: cond_features(config, f, i, m))(partial, jnp.asarray(empty_ids),
                                                                     jnp.asarray(empty_mask))
    return partial.replace(empty_cond=empty[0])


def abstract(config, t5, vae_config):
    """Frozen of ShapeDtypeStructs for the given module configs: what `load` returns, with nothing read or
    allocated."""
    _check_width(config, t5)
    key, ids = jax.random.key(0), jnp.zeros((1, config.model.cond_len), jnp.int32)
    cond = jax.eval_shape(lambda: t5_lib.T5EncoderModel(t5).init(key, ids))
    vae = None
    if vae_config is not None:
        image = jnp.zeros((1, vae_config.downsample_factor, vae_config.downsample_factor, 3), jnp.float32)
        vae = {"params": jax.eval_shape(lambda: vae_lib.AutoencoderKL(vae_config).init(key, image))["params"]}
    pca = jax.eval_shape(lambda: fit_pca(config)) if config.tokenizer.pca_dim else None
    partial = Frozen(cond, jnp.zeros(()), vae, pca, t5, vae_config)
    empty = jax.eval_shape(lambda f: cond_features(config, f, ids, ids)[0], partial)
    return partial.replace(empty_cond=empty)


def _check_width(config, t5):
    if t5.d_model != config.model.cond_dim:
        raise ValueError(f"model.cond_dim={config.model.cond_dim} but the text encoder has width {t5.d_model}")


def fit_pca(config):
    """patch_pca.fit on the patches of `tokenizer.pca_examples` rendered training images (seed `pca_seed`).

    The embedded shapes are the only source that renders without reading data, so the fit is reproducible from
    the config alone (the frozen pytree is never checkpointed)."""
    tok = config.tokenizer
    source = synthetic.CaptionedShapes("train", num_examples=tok.pca_examples, seed=tok.pca_seed,
                                       image_size=tok.image_size)
    images = np.stack([source[i]["image"] for i in range(tok.pca_examples)])
    patches = patchify_lib.patchify(np.asarray(tokens.normalize(images)), tok.patch_size)
    return jax.tree.map(jnp.asarray, patch_pca.fit(patches.reshape(-1, patches.shape[-1]), tok.pca_dim))


def cond_encoder(config, frozen):
    """The frozen text encoder module, computing in the config's precision."""
    return t5_lib.T5EncoderModel(frozen.t5, dtype=precision.compute_dtype(config.model.precision))


def cond_features(config, frozen, ids, mask):
    """Frozen text encoder's last hidden state [B, Lt, Dt] (no gradient)."""
    return jax.lax.stop_gradient(cond_encoder(config, frozen).apply(frozen.cond, ids, mask))
