"""N-way K-shot classification episodes on frozen, cached encoder features (dream_jax/evaluation/features.py).

An episode draws N classes (among those with at least K + Q examples), then K support and Q query examples of
each, all distinct; episodes come from one numpy generator seeded by `seed`, so the same seed gives the same
episodes. Features are centred and scaled with the pool's statistics and L2-normalised; each episode fits a
closed-form classifier on its support set and is scored on its queries:
  ridge: one-hot regression W = S^T (S S^T + lam I)^-1 Y (the dual form: an [NK, NK] solve), argmax of Q W;
  ncm:   nearest class mean by cosine.
Reported: mean query accuracy over episodes and the half-width of its 95% interval (1.96 std / sqrt(E)).
PAPER.md §5's number is 5-way 5-shot averaged over 14 datasets whose list is not published.

Dimension letters: E episodes, N ways, K shots, Q queries per class, D feature dim.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dream_jax.data import eval_sources
from dream_jax.evaluation import features as features_lib

METHODS = ("ridge", "ncm")
# `episodes` episodes of `ways` classes with `shots` support and `queries` query images each; num_images 0: the
# whole split.
DEFAULTS = dict(enabled=True, **eval_sources.SOURCE_DEFAULTS, split="validation", num_images=0, pooling="buffer",
                ways=5, shots=5, queries=15, episodes=1000, method="ridge", ridge=1.0)


def validate(config, name, s):
    """A known method and pooling and a readable split (ValueError / FileNotFoundError naming the setting)."""
    if s.method not in METHODS:
        raise ValueError(f"config.evals.{name}.method={s.method!r}; expected one of {METHODS}")
    if s.pooling not in features_lib.POOLINGS:
        raise ValueError(f"config.evals.{name}.pooling={s.pooling!r}; expected one of {features_lib.POOLINGS}")
    eval_sources.evaluator_source(config, name, s, s.split, s.num_images)


def run(ctx, name, s):
    """`evaluate` on the cached features of the settings' split."""
    x, y, _ = features_lib.of_split(ctx, name, s, s.split, s.num_images)
    return evaluate(x, y, s.ways, s.shots, s.queries, s.episodes, s.seed, s.method, s.ridge)


def episodes(labels, ways=5, shots=5, queries=15, num_episodes=1000, seed=0):
    """Index arrays (support [E, N, K], query [E, N, Q]) into `labels`, and the episode classes [E, N]."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    eligible = classes[counts >= shots + queries]
    if len(eligible) < ways:
        raise ValueError(f"{ways}-way {shots}-shot episodes with {queries} queries need {ways} classes with >= "
                         f"{shots + queries} examples; only {len(eligible)} of {len(classes)} classes have that many")
    members = {c: np.flatnonzero(labels == c) for c in eligible}
    rng = np.random.default_rng(seed)
    support = np.empty((num_episodes, ways, shots), np.int64)
    query = np.empty((num_episodes, ways, queries), np.int64)
    chosen = np.empty((num_episodes, ways), labels.dtype)
    for e in range(num_episodes):
        chosen[e] = rng.choice(eligible, ways, replace=False)
        for j, c in enumerate(chosen[e]):
            pick = rng.choice(members[c], shots + queries, replace=False)
            support[e, j], query[e, j] = pick[:shots], pick[shots:]
    return support, query, chosen


def normalize(features):
    """Centred, per-dimension scaled and L2-normalised features (float32)."""
    x = np.asarray(features, np.float64)
    x = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + 1e-5)
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("method",))
def _episode_accuracy(support, query, method, ridge):
    """support [E, N, K, D], query [E, N, Q, D] -> accuracy [E]."""
    e, n, k, d = support.shape
    if method == "ncm":
        means = support.mean(axis=2)
        means = means / jnp.maximum(jnp.linalg.norm(means, axis=-1, keepdims=True), 1e-12)
        scores = jnp.einsum("enqd,emd->enqm", query, means)
    else:
        s = support.reshape(e, n * k, d)
        y = jnp.repeat(jnp.eye(n), k, axis=0)  # [NK, N]
        gram = jnp.einsum("eid,ejd->eij", s, s) + ridge * jnp.eye(n * k)
        alpha = jnp.linalg.solve(gram, jnp.broadcast_to(y, (e, n * k, n)))
        w = jnp.einsum("eid,ein->edn", s, alpha)
        scores = jnp.einsum("enqd,edm->enqm", query, w)
    truth = jnp.arange(n)[None, :, None]
    return jnp.mean(jnp.argmax(scores, axis=-1) == truth, axis=(1, 2)).reshape(e)


def evaluate(features, labels, ways=5, shots=5, queries=15, num_episodes=1000, seed=0, method="ridge", ridge=1.0,
             chunk=100):
    """{'accuracy', 'ci95', 'episodes'} of N-way K-shot episodes on features [M, D] with labels [M]."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}; expected one of {METHODS}")
    x = normalize(features)
    support, query, _ = episodes(labels, ways, shots, queries, num_episodes, seed)
    acc = []
    for i in range(0, num_episodes, chunk):
        acc.append(np.asarray(_episode_accuracy(jnp.asarray(x[support[i:i + chunk]]),
                                                jnp.asarray(x[query[i:i + chunk]]), method, float(ridge))))
    acc = np.concatenate(acc)
    return {"accuracy": float(acc.mean()), "ci95": float(1.96 * acc.std() / np.sqrt(len(acc))),
            "episodes": float(len(acc)), "chance": 1.0 / ways}
