"""The FID InceptionV3 (the 2015-12-05 TensorFlow graph of the FID / Inception Score papers) in Flax.

This is the network pytorch-fid and torch-fidelity port to PyTorch: torchvision's InceptionV3 with the blocks
patched to match TensorFlow (average pools that ignore padding, a max pool in the last block), 1008 logits. The
input is resized to 299 x 299 with bilinear interpolation and mapped to [-1, 1]; `pool3` is the 2048-d mean of
the last block (FID's features), `logits` feed the Inception Score. Module names mirror the PyTorch state_dict
(`Mixed_6b.branch7x7_2.conv.weight` -> params['Mixed_6b']['branch7x7_2']['conv']['kernel']), so importing the
standard weights file is a rename + transpose (dream_jax/evaluation/fid.py).

Two resizes, both exact for any input size: "tf1" is TensorFlow 1's ResizeBilinear without half-pixel centres,
as the original graph and torch-fidelity (the paper's FID tool); "pytorch" is F.interpolate(bilinear,
align_corners=False), as pytorch-fid. Neither antialiases when downsampling, like their references.

Dimension letters: B batch, H/W height/width, C channels, O output size (299).
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
RESIZE_MODES = ("tf1", "pytorch")


def _resize_matrix(in_size, out_size, mode):
    """float32 [O, in]: row o holds the bilinear weights of output pixel o (float64 arithmetic, then cast)."""
    scale = in_size / out_size
    out = np.arange(out_size, dtype=np.float64)
    if mode == "tf1":
        src = out * scale
    elif mode == "pytorch":
        src = np.maximum((out + 0.5) * scale - 0.5, 0.0)
    else:
        raise ValueError(f"resize={mode!r}; expected one of {RESIZE_MODES}")
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    m = np.zeros((out_size, in_size), np.float64)
    np.add.at(m, (np.arange(out_size), lo), 1.0 - frac)
    np.add.at(m, (np.arange(out_size), hi), frac)
    return m.astype(np.float32)


def preprocess(images, mode="tf1", size=INPUT_SIZE):
    """uint8 (or 0..255 float) images [B, H, W, 3] -> float32 [B, O, O, 3] in [-1, 1] as the reference does."""
    x = jnp.asarray(images).astype(jnp.float32)
    rows = jnp.asarray(_resize_matrix(x.shape[1], size, mode))
    cols = jnp.asarray(_resize_matrix(x.shape[2], size, mode))
    x = jnp.einsum("oh,bhwc->bowc", rows, x)
    x = jnp.einsum("pw,bowc->bopc", cols, x)
    if mode == "tf1":
        return (x - 128.0) / 128.0  # the graph's Sub/Mul, exactly as torch-fidelity
    return x / 127.5 - 1.0  # pytorch-fid: 2 * (x / 255) - 1


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU."""

    features: int
    kernel: tuple = (1, 1)
    strides: int = 1
    padding: tuple = (0, 0)

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = nn.Conv(self.features, self.kernel, strides=self.strides, padding=((ph, ph), (pw, pw)), use_bias=False,
                    name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool(x):
    # TensorFlow's average pool divides by the number of non-padding inputs.
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x, stride=2, pad=0):
    return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(64, name="branch1x1")(x)
        b5 = BasicConv2d(48, name="branch5x5_1")(x)
        b5 = BasicConv2d(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv2d(self.pool_features, name="branch_pool")(_avg_pool(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = BasicConv2d(64, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv2d(192, name="branch1x1")(x)
        b7 = BasicConv2d(c7, name="branch7x7_1")(x)
        b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c7, name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, name="branch_pool")(_avg_pool(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(192, name="branch3x3_1")(x)
        b3 = BasicConv2d(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b pools with an average (`max_pool=False`), Mixed_7c with a max: the TensorFlow graph's quirk."""

    max_pool: bool

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(320, name="branch1x1")(x)
        b3 = BasicConv2d(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv2d(448, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        pooled = _max_pool(x, stride=1, pad=1) if self.max_pool else _avg_pool(x)
        bp = BasicConv2d(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """uint8 images [B, H, W, 3] -> {'pool3': [B, 2048], 'logits_unbiased': [B, 1008], 'logits': [B, 1008]}.

    `logits_unbiased` (no fc bias) is what the original Inception Score code and torch-fidelity's IS use.
    """

    resize: str = "tf1"

    @nn.compact
    def __call__(self, images):
        x = preprocess(images, self.resize)
        x = BasicConv2d(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool(x)
        x = BasicConv2d(80, name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(max_pool=False, name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)
        pool3 = jnp.mean(x, axis=(1, 2))
        unbiased, logits = _Logits(1008, name="fc")(pool3)
        return {"pool3": pool3, "logits_unbiased": unbiased, "logits": logits}


class _Logits(nn.Module):
    """The fc layer, returning its output without and with the bias."""

    features: int

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        unbiased = x @ kernel
        return unbiased, unbiased + bias
