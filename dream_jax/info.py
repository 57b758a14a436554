"""`--mode=info`: parameter counts per component and training FLOPs per example, without allocating weights.

Shapes come from jax.eval_shape of the real modules, so the table is the model that trains. The frozen text
encoder and VAE are listed apart: they are not trained and not in the checkpoint.
"""

import jax
import jax.numpy as jnp

from dream_jax import flops
from dream_jax import frozen as frozen_lib
from dream_jax import state as state_lib
from dream_jax.models import t5 as t5_lib
from dream_jax.models import vae as vae_lib

# Parameter subtrees of DREAM per reported component.
COMPONENTS = (
    ("encoder", ("encoder",)),
    ("decoder", ("decoder",)),
    ("text aligner", ("aligner",)),
    ("CLIP text tower", ("text_tower",)),
    ("projections", ("image_projection", "logit_scale")),
    ("diffusion head", ("diffloss_net",)),
)

# google-t5/t5-large's encoder (config.json of the checkpoint DREAM uses); sd-vae-ft-ema is VaeConfig's default.
T5_LARGE = dict(d_model=1024, d_kv=64, d_ff=4096, num_layers=24, num_heads=16, vocab_size=32128)


def _count(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


def trainable_counts(config):
    """{component: parameter count} of DREAM at this config (eval_shape only)."""
    params = state_lib.abstract_variables(config)["params"]
    counts = {name: sum(_count(params[k]) for k in keys) for name, keys in COMPONENTS}
    if sum(counts.values()) != _count(params):
        raise AssertionError("a DREAM parameter subtree is missing from info.COMPONENTS")
    return counts


def frozen_counts(config):
    """{frozen component: parameter count} for the configured text encoder and tokenizer."""
    out = {}
    if config.text.cond_encoder == "t5":
        t5_config, name = t5_lib.T5Config(**T5_LARGE), "T5-Large encoder (frozen)"
    else:
        t5_config, name = frozen_lib.tiny_t5_config(config), "tiny T5 encoder (frozen, random)"
    ids = jax.ShapeDtypeStruct((1, config.model.cond_len), jnp.int32)
    out[name] = _count(jax.eval_shape(lambda i: t5_lib.T5EncoderModel(t5_config).init(jax.random.key(0), i), ids))
    if config.tokenizer.kind == "vae":
        size = config.tokenizer.image_size
        x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
        vae = vae_lib.AutoencoderKL(vae_lib.VaeConfig())
        out["SD-VAE KL-f8 (frozen)"] = _count(jax.eval_shape(lambda i: vae.init(jax.random.key(0), i), x))
    return out, t5_config


def report(config):
    """The info table as text."""
    trainable = trainable_counts(config)
    frozen, t5_config = frozen_counts(config)
    lines = [f"DREAM scale {config.model.scale}: width {config.model.width}, depth {config.model.encoder_depth}+"
             f"{config.model.decoder_depth}, heads {config.model.num_heads}, MLP {config.model.mlp_dim}", "",
             f"| {'component':<36} | {'parameters':>15} |", f"|{'-' * 38}|{'-' * 17}|"]
    lines += [f"| {name:<36} | {n:>15,} |" for name, n in trainable.items()]
    lines.append(f"| {'total trainable':<36} | {sum(trainable.values()):>15,} |")
    lines += [f"| {name:<36} | {n:>15,} |" for name, n in frozen.items()]
    t5 = dict(d_model=t5_config.d_model, d_kv=t5_config.d_kv, num_heads=t5_config.num_heads, d_ff=t5_config.d_ff,
              num_layers=t5_config.num_layers, gated=t5_config.is_gated)
    lines += ["", "| mask ratio | training GFLOPs / example (trainable x3 + frozen T5 fwd) |", "|---|---|"]
    for ratio in (0.0, 0.75):
        lines.append(f"| {ratio:.2f} | {flops.train_flops_per_example(config, ratio, t5) / 1e9:,.1f} |")
    if config.tokenizer.kind == "vae":
        lines.append("(the frozen VAE encoder's FLOPs are not included; cache latents to skip them)")
    return "\n".join(lines)
