"""FID and Inception Score with the FID InceptionV3 in Flax (dream_jax/models/inception.py).

Weights: the user's local copy of the standard FID Inception file, pytorch-fid's
`pt_inception-2015-12-05-6726825d.pth` or torch-fidelity's `weights-inception-2015-12-05-6726825d.pth` (the same
tensors under the same names; a torch state_dict read with `torch.load(weights_only=True)`, torch imported only
here and only for a .pth), or an .npz with the same keys (`export_npz` writes one, so later runs need no torch).
Nothing is downloaded.

Statistics: mean and covariance of the pool3 features accumulated in float64 batch by batch (Chan's pairwise
update: exact to rounding, no 50K x 2048 matrix kept); the covariance has ddof=1 like np.cov in pytorch-fid.
FID = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) with pytorch-fid's care: scipy's sqrtm in float64; if the
result is not finite, retry with eps*I added to both covariances; drop an imaginary part that rounding left
(an error if it is not tiny). Inception Score: exp(E_x KL(p(y|x) || p(y))) over 1008 classes from the logits
without the fc bias (as the original IS code and torch-fidelity), mean and std over 10 splits.

Dimension letters: N images, F features (2048), K classes (1008).
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.special

from dream_jax import batching, sharding
from dream_jax.data import eval_sources, paths
from dream_jax.evaluation import prompts
from dream_jax.evaluation import features as features_lib
from dream_jax.generation import generate
from dream_jax.models.inception import FIDInceptionV3

WEIGHTS_HINT = ("a local copy of the standard FID Inception weights: pytorch-fid's "
                "pt_inception-2015-12-05-6726825d.pth, torch-fidelity's weights-inception-2015-12-05-6726825d.pth, "
                "or an .npz export of either (dream_jax.evaluation.fid.export_npz)")
# num_samples generated images (one per prompt, SAD decoding unless sad=False) against num_reference real ones
# (`reference`: 'shapes' or a folder; its statistics cached at reference_stats), in chunks of `chunk` prompts.
DEFAULTS = dict(enabled=True, inception_weights="", resize="tf1", prompts="", reference="", reference_stats="",
                num_samples=50_000, num_reference=50_000, sad=True, batch_size=64, chunk=1024, inception_score=True,
                seed=0)


# ------------------------------------------------------------------------------------------------------ weights
def _read_state_dict(path, what="config.evals.fid.inception_weights"):
    paths.check_file(path, what, WEIGHTS_HINT)
    if path.endswith(".npz"):
        with np.load(path) as f:
            return {k: np.asarray(f[k]) for k in f.files}
    import torch  # only for a .pth; an .npz export needs no torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def _assign(tree, keys, value):
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
    tree[keys[-1]] = value


def variables_from_state_dict(state):
    """torch-named arrays ({'Mixed_5b.branch1x1.conv.weight': ...}) -> Flax {'params', 'batch_stats'}."""
    expected = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0), jnp.zeros((1, 75, 75, 3), jnp.uint8))
    params, stats = {}, {}
    for name, value in state.items():
        *path, leaf = name.split(".")
        value = np.asarray(value, np.float32)
        if leaf == "num_batches_tracked":
            continue
        if path == ["fc"]:
            _assign(params, ["fc", {"weight": "kernel", "bias": "bias"}[leaf]], value.T if leaf == "weight" else value)
        elif path[-1] == "conv":
            _assign(params, path + ["kernel"], value.transpose(2, 3, 1, 0))  # [O, I, kh, kw] -> [kh, kw, I, O]
        elif path[-1] == "bn" and leaf in ("weight", "bias"):
            _assign(params, path + [{"weight": "scale", "bias": "bias"}[leaf]], value)
        elif path[-1] == "bn":
            _assign(stats, path + [{"running_mean": "mean", "running_var": "var"}[leaf]], value)
        else:
            raise ValueError(f"unexpected tensor {name!r} in the Inception weights; expected {WEIGHTS_HINT}")
    variables = {"params": params, "batch_stats": stats}
    want = {jax.tree_util.keystr(p): s.shape for p, s in jax.tree_util.tree_leaves_with_path(expected)}
    have = {jax.tree_util.keystr(p): np.shape(v) for p, v in jax.tree_util.tree_leaves_with_path(variables)}
    missing = sorted(set(want) - set(have))
    wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if missing or wrong or len(have) != len(want):
        raise ValueError(f"the Inception weights do not match the FID InceptionV3: missing {missing[:3]}, wrong "
                         f"shapes {[(k, have[k], want[k]) for k in wrong[:3]]}; expected {WEIGHTS_HINT}")
    return jax.tree.map(jnp.asarray, variables)


def load_inception(path, what="config.evals.fid.inception_weights"):
    """Flax variables of the FID Inception from a .pth state_dict or .npz; FileNotFoundError naming `what`."""
    return variables_from_state_dict(_read_state_dict(path, what))


def export_npz(pth_path, npz_path):
    """Writes the .pth weights as an .npz with the same keys, so later runs need no torch."""
    state = _read_state_dict(pth_path, "pth_path")
    np.savez(npz_path, **{k: v for k, v in state.items() if not k.endswith("num_batches_tracked")})
    return npz_path


@functools.partial(jax.jit, static_argnames=("resize",))
def inception_outputs(variables, images, resize="tf1"):
    """uint8 [N, H, W, 3] -> (pool3 [N, F], logits without bias [N, K]), float32."""
    out = FIDInceptionV3(resize=resize).apply(variables, images)
    return out["pool3"], out["logits_unbiased"]


# --------------------------------------------------------------------------------------------------- statistics
class GaussianStats:
    """Running mean and covariance (float64) of feature batches, merged with Chan's pairwise update."""

    def __init__(self):
        self.n = 0
        self.mean = None
        self.m2 = None  # sum of outer products of deviations from the mean

    def add(self, features):
        x = np.asarray(features, np.float64)
        n_b = x.shape[0]
        if n_b == 0:
            return self
        mean_b = x.mean(axis=0)
        dev = x - mean_b
        m2_b = dev.T @ dev
        if self.n == 0:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return self
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + np.outer(delta, delta) * (self.n * n_b / n)
        self.n = n
        return self

    def result(self):
        """(mu [F], sigma [F, F]) with ddof=1; ValueError with fewer than 2 samples."""
        if self.n < 2:
            raise ValueError(f"FID statistics need at least 2 images, got {self.n}")
        return self.mean, self.m2 / (self.n - 1)


def statistics(features):
    """(mu, sigma) of features [N, F] in float64, as pytorch-fid (np.cov with rowvar=False)."""
    return GaussianStats().add(features).result()


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), float64."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
                         f"{sigma2.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # A singular product (fewer samples than dimensions): shift both covariances off zero, as pytorch-fid.
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"the matrix square root has a large imaginary part "
                             f"({np.max(np.abs(covmean.imag)):.3g}); the covariances are ill-conditioned")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def inception_score(logits, splits=10):
    """(mean, std) over `splits` contiguous splits of exp(E KL(p(y|x) || p(y))); logits [N, K]."""
    logits = np.asarray(logits, np.float64)
    if logits.shape[0] < splits:
        raise ValueError(f"inception score with {splits} splits needs at least {splits} images, got "
                         f"{logits.shape[0]}")
    logp = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
    scores = []
    for part in np.array_split(logp, splits):
        p = np.exp(part)
        # log p(y) from the log-probabilities, so classes that every image rules out stay finite.
        log_marginal = scipy.special.logsumexp(part, axis=0, keepdims=True) - np.log(part.shape[0])
        scores.append(np.exp(np.mean(np.sum(p * (part - log_marginal), axis=1))))
    return float(np.mean(scores)), float(np.std(scores))


def save_statistics(path, mu, sigma, count):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, mu=mu, sigma=sigma, count=count)
    os.replace(tmp, path)


def load_statistics(path, what="config.evals.fid.reference_stats"):
    """(mu, sigma) from an .npz with `mu` and `sigma` (ours, pytorch-fid's or torch-fidelity's layout)."""
    paths.check_file(path, what, "an .npz with mu and sigma of the reference images' pool3 features")
    with np.load(path) as f:
        if "mu" not in f.files or "sigma" not in f.files:
            raise ValueError(f"{what}={path!r} has {f.files}; expected arrays 'mu' and 'sigma'")
        return np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)


# ---------------------------------------------------------------------------------------------------- evaluator
def validate(config, name, s):
    """The Inception weights, the prompt file and the reference exist (FileNotFoundError naming the setting)."""
    what = f"config.evals.{name}"
    paths.check_file(s.inception_weights, f"{what}.inception_weights", WEIGHTS_HINT)
    if s.prompts != "shapes":
        paths.check_file(s.prompts, f"{what}.prompts", prompts.HINT + " (the paper: the captions of held-out "
                         "CC12M shards)")
    if not (s.reference_stats and os.path.exists(s.reference_stats)) and s.reference != "shapes":
        paths.check_file(s.reference, f"{what}.reference", "'shapes', a folder of real images, or an existing "
                         f"{what}.reference_stats .npz", folder_ok=True)


def _inception(ctx, inception, images, batch_size, resize):
    """(pool3 [N, F], logits without bias [N, K]) of uint8 images, in batches sharded over the mesh."""
    outs = list(ctx.batched(lambda b, x: inception_outputs(inception, x, resize),
                            batching.slices((np.asarray(images),), batch_size)))
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def reference_statistics(ctx, name, s, inception):
    """(mu, sigma) of the reference images: from reference_stats if it exists, else computed and cached there (or
    under WORKDIR/eval/fid_reference)."""
    if s.reference_stats and os.path.exists(s.reference_stats):
        return load_statistics(s.reference_stats, f"config.evals.{name}.reference_stats")
    size = ctx.config.tokenizer.image_size
    if s.reference == "shapes":
        source = eval_sources.ShapesSource("heldout", s.num_reference, size, seed=s.seed + 3000)
    else:
        source = eval_sources.ImageFolder(s.reference, size, s.num_reference, f"config.evals.{name}.reference")
    path = s.reference_stats or os.path.join(ctx.workdir, "eval", "fid_reference", f"{source.key}_{s.resize}.npz")
    if os.path.exists(path):
        return load_statistics(path)
    ctx.log(f"FID reference statistics of {len(source)} images -> {path}")
    acc = GaussianStats()
    for images, _ in features_lib.batches(source, s.batch_size):
        acc.add(_inception(ctx, inception, images, s.batch_size, s.resize)[0])
    mu, sigma = acc.result()
    if jax.process_index() == 0:
        save_statistics(path, mu, sigma, acc.n)
    return mu, sigma


def run(ctx, name, s):
    """{'fid', 'num_samples', and 'inception_score' / 'inception_score_std'} of num_samples generated images."""
    what = f"config.evals.{name}"
    inception = jax.device_put(load_inception(s.inception_weights, f"{what}.inception_weights"),
                               sharding.replicated(ctx.mesh))
    mu_ref, sigma_ref = reference_statistics(ctx, name, s, inception)
    texts, _ = prompts.of_settings(s, s.num_samples, f"{what}.prompts")
    opts = generate.mode_options(ctx.config, "sad" if s.sad else "plain")
    acc, logits = GaussianStats(), []
    for start in range(0, len(texts), s.chunk):
        images, _, _ = ctx.predict.sample(texts[start:start + s.chunk], 1, s.seed + start, opts, log=ctx.log)
        pool3, unbiased = _inception(ctx, inception, images[:, 0], s.batch_size, s.resize)
        acc.add(pool3)
        logits.append(unbiased)
        ctx.log(f"FID: {acc.n}/{len(texts)} generated images through Inception")
    mu, sigma = acc.result()
    out = {"fid": frechet_distance(mu, sigma, mu_ref, sigma_ref), "num_samples": float(acc.n)}
    if s.inception_score:
        out["inception_score"], out["inception_score_std"] = inception_score(np.concatenate(logits), min(10, acc.n))
    return out
