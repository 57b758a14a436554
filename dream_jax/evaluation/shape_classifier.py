"""A Fréchet distance for the captioned-shapes domain: FID's formula in a small fixed classifier's features.

FID measures generated vs real images in an ImageNet Inception's pool3 features, which say little about 32x32
drawings of four shapes. Here the feature network is a small convnet trained (seeded, deterministic on one host)
to read the renderer's four attributes back from rendered images; its penultimate layer (F = 64) plays pool3's
role, and the distance is fid.frechet_distance of the two sets' Gaussian statistics. The trained classifier is
cached in a file (flax msgpack) with the settings that trained it, so every run of a study measures in the same
feature space; a cache trained for another image size is an error, not silently reused.

Dimension letters: N images, H W image height and width, F features, A attribute classes.
"""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from dream_jax.data import synthetic
from dream_jax.evaluation import fid

FEATURES = 64


class ShapeClassifier(nn.Module):
    """uint8 [N, H, W, 3] -> (features [N, F], {attribute: logits [N, A]})."""

    width: int = 32

    @nn.compact
    def __call__(self, images):
        x = images.astype(jnp.float32) / 127.5 - 1.0
        for i, mult in enumerate((1, 2, 2)):
            x = nn.relu(nn.Conv(self.width * mult, (3, 3), name=f"conv{i}")(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
        # tanh, not relu: a dead unit would make the features' covariance singular.
        feats = jnp.tanh(nn.Dense(FEATURES, name="features")(x.reshape(x.shape[0], -1)))
        heads = {a: nn.Dense(len(synthetic.class_names(a)), name=f"head_{a}")(feats) for a in synthetic.ATTRIBUTES}
        return feats, heads


def rendered(split, num, image_size, seed):
    """(uint8 images [N, H, W, 3], {attribute: int [N]}) of the synthetic set."""
    source = synthetic.CaptionedShapes(split, num_examples=num, seed=seed, image_size=image_size)
    items = [source[i] for i in range(num)]
    return (np.stack([it["image"] for it in items]),
            {a: np.array([it[a] for it in items], np.int32) for a in synthetic.ATTRIBUTES})


def _loss(model, params, images, labels):
    _, heads = model.apply(params, images)
    return sum(optax.softmax_cross_entropy_with_integer_labels(heads[a], labels[a]).mean() for a in heads)


def train(image_size=32, seed=0, steps=300, num_images=8192, batch_size=128, width=32, lr=3e-3):
    """Classifier variables trained with Adam on rendered training-split images (a fixed measuring instrument,
    not a model under test); minibatch order and init from `seed`."""
    model = ShapeClassifier(width)
    images, labels = rendered("train", num_images, image_size, seed + 5000)
    params = model.init(jax.random.key(seed), images[:1])
    tx = optax.adam(lr)

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(functools.partial(_loss, model))(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    order = np.random.default_rng(seed).permutation(steps * batch_size) % num_images
    for i in range(steps):
        idx = order[i * batch_size:(i + 1) * batch_size]
        params, opt_state, _ = step(params, opt_state, images[idx], {a: v[idx] for a, v in labels.items()})
    return params


def _template(image_size, width):
    return jax.eval_shape(ShapeClassifier(width).init, jax.random.key(0),
                          jnp.zeros((1, image_size, image_size, 3), jnp.uint8))


def load_or_train(path, image_size=32, seed=0, steps=300, width=32, log=print):
    """Classifier variables from `path` (whatever settings trained it, for `image_size` images), trained with
    these settings and written there when the file does not exist yet."""
    if os.path.exists(path):
        with open(path, "rb") as f:
            stored = serialization.msgpack_restore(f.read())
        settings = {k: int(v) for k, v in stored.get("settings", {}).items()}
        if settings.get("image_size") != image_size or "width" not in settings:
            raise ValueError(f"the shape classifier {path!r} was trained with {settings}, not for {image_size}x"
                             f"{image_size} images; delete it or point the setting elsewhere")
        return serialization.from_state_dict(_template(image_size, settings["width"]), stored["params"])
    log(f"training the shape classifier for the Fréchet distance ({steps} steps) -> {path}")
    params = train(image_size, seed, steps, width=width)
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        settings = {"image_size": image_size, "seed": seed, "steps": steps, "width": width}
        with open(f"{path}.tmp", "wb") as f:
            f.write(serialization.msgpack_serialize({"settings": settings,
                                                     "params": serialization.to_state_dict(params)}))
        os.replace(f"{path}.tmp", path)
    return params


@functools.partial(jax.jit, static_argnames=("width",))
def _apply(params, images, width=32):
    return ShapeClassifier(width).apply(params, images)


def outputs(params, images, batch_size=512):
    """(features [N, F], {attribute: predicted class [N]}) of uint8 images [N, H, W, 3]."""
    width = params["params"]["conv0"]["kernel"].shape[-1]
    feats, preds = [], {a: [] for a in synthetic.ATTRIBUTES}
    for i in range(0, len(images), batch_size):
        f, heads = _apply(params, jnp.asarray(images[i:i + batch_size]), width)
        feats.append(np.asarray(f))
        for a in heads:
            preds[a].append(np.asarray(heads[a].argmax(-1)))
    return np.concatenate(feats), {a: np.concatenate(v) for a, v in preds.items()}


def statistics(params, images):
    """(mu [F], sigma [F, F]) of uint8 images [N, H, W, 3] in the classifier's features."""
    return fid.statistics(outputs(params, images)[0])


def frechet(params, images, reference_stats):
    """Fréchet distance of uint8 images [N, H, W, 3] to a reference set's `statistics` in the classifier's
    features (the reference's computed once for every set measured against it)."""
    return fid.frechet_distance(*statistics(params, images), *reference_stats)


def reference_images(num, image_size=32, seed=0):
    """uint8 [N, H, W, 3]: real held-out renders (a draw apart from the alignment prompts') to measure against."""
    return rendered("heldout", num, image_size, seed + 3000)[0]
