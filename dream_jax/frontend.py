"""The frozen ends of DREAM: image tokenizer (pixels or SD-VAE) and the generator's text encoder (T5).

Neither is trained, so their parameters live in a separate `frozen` pytree handed to the jitted steps, never in
the train state or its checkpoints. Host-side text tokenizers turn captions into the CLIP ids of the text tower
and the ids + mask of the frozen encoder. The tiny config uses RGB pixels, a word tokenizer and a random-init
T5 with a fixed seed, so nothing is downloaded.

Dimension letters: B batch, H/W image size, L tokens, T token dim, C CLIP context, Lt/Dt cond length/width.
"""

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dream_jax.models import patch_pca, precision
from dream_jax.models import patchify as patchify_lib
from dream_jax.models import t5 as t5_lib


def _words_clip(tokenizer, context, texts, truncate):
    return tokenizer.encode(texts, context, truncate=truncate)


def _words_cond(tokenizer, context, texts):
    ids = tokenizer.encode(texts, context, truncate=True)
    return ids, (ids != tokenizer.pad_id).astype(np.int32)


def _bpe_clip(tokenizer, texts, truncate):
    return tokenizer.encode(texts, truncate=truncate)


def _t5_cond(tokenizer, texts):
    return tokenizer.encode(texts)


@dataclasses.dataclass(frozen=True)
class TextTokenizers:
    """CLIP ids for the text tower and (ids, mask) for the frozen encoder, from caption strings.

    Holds picklable partials so grain worker processes can tokenise.
    """

    clip: Any
    cond: Any

    def clip_ids(self, captions, truncate=True):
        """int32 [N, C]; with truncate=False a caption longer than the context is a ValueError."""
        return self.clip(list(captions), truncate)

    def cond_ids(self, captions):
        """(ids, mask) int32 [N, Lt], truncated to Lt as the authors' T5 tokenisation."""
        return self.cond(list(captions))


def make_tokenizers(config):
    """The tokenizers the config names; raises ValueError for an unknown one."""
    t, m = config.text, config.model
    context = m.text_tower.context_length
    if t.clip_tokenizer == "words" and t.cond_encoder == "tiny_t5":
        from dream_jax.data.word_tokenizer import WordTokenizer

        words = WordTokenizer()
        if words.vocab_size > m.text_tower.vocab_size:
            raise ValueError(f"model.text_tower.vocab_size={m.text_tower.vocab_size} < word vocabulary "
                             f"{words.vocab_size}")
        return TextTokenizers(functools.partial(_words_clip, words, context),
                              functools.partial(_words_cond, words, m.cond_len))
    if t.clip_tokenizer == "clip_bpe" and t.cond_encoder == "t5":
        from dream_jax.data.clip_tokenizer import ClipTokenizer
        from dream_jax.data.t5_tokenizer import T5Tokenizer

        clip = ClipTokenizer(t.clip_vocab_path, context)
        t5 = T5Tokenizer(os.path.join(t.t5_path, "spiece.model"), m.cond_len)
        return TextTokenizers(functools.partial(_bpe_clip, clip), functools.partial(_t5_cond, t5))
    raise ValueError(f"unsupported text.clip_tokenizer={t.clip_tokenizer!r} with text.cond_encoder="
                     f"{t.cond_encoder!r}; expected words+tiny_t5 or clip_bpe+t5")


def missing_files(config):
    """What the config needs from disk and is absent: one line per problem, each saying what to get and where.

    Checked before anything loads, so a run that lacks the data does not first spend minutes loading T5-Large.
    """
    from dream_jax import pretrained
    from dream_jax.data import clip_tokenizer, pipeline

    problems = []

    def need(name, path, files, source):
        if not path:
            problems.append(f"config.{name} is empty; pass --config.{name}=DIR. {source}")
        elif not os.path.isdir(path):
            problems.append(f"config.{name}={path!r} is not a directory. {source}")
        else:
            for group in files:  # each group: alternatives, any one of which will do
                if not any(os.path.isfile(os.path.join(path, f)) for f in group):
                    problems.append(f"config.{name}={path!r} lacks {' or '.join(group)}. {source}")

    if config.tokenizer.kind == "vae":
        weights = pretrained.VAE_WEIGHTS
        need("tokenizer.vae_path", config.tokenizer.vae_path, [["config.json"], [weights, weights + ".index.json"]],
             pretrained._VAE_SOURCE)
    t = config.text
    if t.cond_encoder == "t5":
        weights = pretrained.T5_WEIGHTS
        need("text.t5_path", t.t5_path, [["config.json"], [weights, weights + ".index.json"], ["spiece.model"]],
             pretrained._T5_SOURCE)
    if t.clip_tokenizer == "clip_bpe" and not os.path.isfile(t.clip_vocab_path or ""):
        what = "is empty; pass --config.text.clip_vocab_path=FILE" if not t.clip_vocab_path else "is not a file"
        problems.append(f"config.text.clip_vocab_path={t.clip_vocab_path!r} {what}. {clip_tokenizer._SOURCE}")
    try:
        pipeline.check_data_path(config)
    except FileNotFoundError as e:
        problems.append(str(e))
    return problems


def check_files(config):
    """One FileNotFoundError listing every missing pretrained file or data path of the config."""
    problems = missing_files(config)
    if problems:
        raise FileNotFoundError("missing files (dream_jax never downloads):\n  - " + "\n  - ".join(problems))


def tiny_t5_config(config):
    t = config.text.tiny_t5
    return t5_lib.T5Config(d_model=t.d_model, d_kv=t.d_kv, d_ff=t.d_ff, num_layers=t.num_layers,
                           num_heads=t.num_heads, vocab_size=config.model.text_tower.vocab_size)


def load_frozen(config, tokenizers):
    """Builds the frozen pytree: cond-encoder params, the empty-prompt features, VAE params if used."""
    frozen = {}
    if config.text.cond_encoder == "tiny_t5":
        t5_config = tiny_t5_config(config)
        ids = jnp.zeros((1, config.model.cond_len), jnp.int32)
        frozen["cond"] = t5_lib.T5EncoderModel(t5_config).init(jax.random.key(config.text.tiny_t5.seed), ids)
    else:
        from dream_jax import pretrained

        t5_config, params = pretrained.load_t5(config.text.t5_path)
        frozen["cond"] = {"params": params}
    if t5_config.d_model != config.model.cond_dim:
        raise ValueError(f"model.cond_dim={config.model.cond_dim} but the text encoder has width {t5_config.d_model}")
    if config.tokenizer.kind == "vae":
        from dream_jax import pretrained

        frozen["vae"] = {"params": pretrained.load_vae(config.tokenizer.vae_path)[1]}
    if config.tokenizer.pca_dim:
        frozen["pca"] = fit_pca(config)
    empty_ids, empty_mask = tokenizers.cond_ids([""])
    frozen["empty_cond"] = cond_features(config, frozen, jnp.asarray(empty_ids), jnp.asarray(empty_mask))[0]
    return frozen


def fit_pca(config):
    """patch_pca.fit on the patches of `tokenizer.pca_examples` rendered training images (seed `pca_seed`).

    The embedded shapes are the only source that renders without reading data, so the fit is reproducible from
    the config alone (the frozen pytree is never checkpointed)."""
    from dream_jax.data import synthetic

    tok = config.tokenizer
    source = synthetic.CaptionedShapes("train", num_examples=tok.pca_examples, seed=tok.pca_seed,
                                       image_size=tok.image_size)
    images = np.stack([source[i]["image"] for i in range(tok.pca_examples)])
    patches = patchify_lib.patchify(np.asarray(normalize(images)), tok.patch_size)
    return jax.tree.map(jnp.asarray, patch_pca.fit(patches.reshape(-1, patches.shape[-1]), tok.pca_dim))


def cond_encoder(config):
    dtype = precision.compute_dtype(config.model.precision)
    if config.text.cond_encoder == "tiny_t5":
        return t5_lib.T5EncoderModel(tiny_t5_config(config), dtype=dtype)
    from dream_jax import pretrained

    return t5_lib.T5EncoderModel(pretrained.t5_config(config.text.t5_path), dtype=dtype)


def cond_features(config, frozen, ids, mask):
    """Frozen T5 last hidden state [B, Lt, Dt] (no gradient)."""
    out = cond_encoder(config).apply(frozen["cond"], ids, mask)
    return jax.lax.stop_gradient(out)


def vae(config, dtype=None):
    """The frozen SD-VAE module of the config (its shape from the local directory's config.json)."""
    from dream_jax import pretrained
    from dream_jax.models import vae as vae_lib

    dtype = precision.compute_dtype(config.model.precision) if dtype is None else jnp.dtype(dtype)
    return vae_lib.AutoencoderKL(pretrained.vae_config(config.tokenizer.vae_path), dtype=dtype)


def normalize(images):
    """uint8 [..., 3] -> float32 in [-1, 1], the authors' Normalize(0.5, 0.5)."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def images_to_tokens(config, frozen, images, rng):
    """Pixels or cached posterior moments -> tokens [B, L, T].

    `images` is uint8 [B, H, W, 3], or, from the latent cache (`data.source='latents'`), the VAE posterior
    moments [B, h, w, 2 * latent channels] (mean then logvar, any float dtype). The VAE path samples the
    posterior, as the authors do, so cached and uncached training see the same distribution of latents.
    """
    tok = config.tokenizer
    if jnp.issubdtype(images.dtype, jnp.floating):
        if tok.kind != "vae":
            raise ValueError(f"cached VAE moments reached tokenizer.kind={tok.kind!r}; the latent cache needs 'vae'")
        mean, logvar = jnp.split(images.astype(jnp.float32), 2, axis=-1)
        return moments_to_tokens(config, mean, logvar, rng)
    x = normalize(images)
    if tok.kind == "pixels":
        patches = patchify_lib.patchify(x, tok.patch_size)
        return patch_pca.encode(frozen["pca"], patches) if tok.pca_dim else patches
    mean, logvar = vae(config).apply(frozen["vae"], x, method="encode")
    return moments_to_tokens(config, mean, logvar, rng)


def moments_to_tokens(config, mean, logvar, rng):
    """One posterior draw of the latent [B, h, w, c], scaled by latent_scale and patchified (no gradient)."""
    from dream_jax.models import vae as vae_lib

    latent = vae_lib.sample_posterior(rng, mean, logvar) * config.tokenizer.latent_scale
    return patchify_lib.patchify(jax.lax.stop_gradient(latent), config.tokenizer.patch_size)


def x0_constraint(config, frozen):
    """The head sampler's map of a denoised token estimate x0 [N, T] onto valid tokens, or None (unconstrained).

    With diffusion.clip_denoised the image the tokens decode to must lie in [-1, 1]: raw pixel patches (and VAE
    latents, as IDDPM's option) are clipped; PCA tokens are decoded, clipped in pixel space and re-encoded, as
    clipping whitened coefficients would not bound the pixels. Without it x0 is left alone, as MAR samples latents.
    """
    if not config.diffusion.clip_denoised:
        return None
    if config.tokenizer.kind == "pixels" and config.tokenizer.pca_dim:
        pca = frozen["pca"]
        return lambda x0: patch_pca.encode(pca, jnp.clip(patch_pca.decode(pca, x0), -1.0, 1.0))
    return lambda x0: jnp.clip(x0, -1.0, 1.0)


def tokens_to_images(config, frozen, tokens):
    """tokens [B, L, T] -> uint8 images [B, H, W, 3]."""
    tok = config.tokenizer
    if tok.kind == "pixels":
        patches = patch_pca.decode(frozen["pca"], tokens) if tok.pca_dim else tokens
        x = patchify_lib.unpatchify(patches, tok.patch_size, 3)
    else:
        latent = patchify_lib.unpatchify(tokens, tok.patch_size, 4) / tok.latent_scale
        x = vae(config).apply(frozen["vae"], latent, method="decode")
    return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
