"""`--mode=eval` and periodic evaluation: runs the evaluators that `config.evals` names and records their metrics.

`config.evals` maps a name to one evaluator's settings (kinds and every setting: configs/common.py EVAL_DEFAULTS;
protocols: docs/EVALUATION.md). Settings missing from a config take the kind's defaults; a misspelt one is an
error. Before anything is restored, every enabled evaluator checks that what it needs exists (datasets prepared,
weights and prompt files present) and fails with a message naming the setting to provide.

Metrics are named `<evaluator name>/<metric>`; they go to TensorBoard and metrics.jsonl under WORKDIR/eval (the
project's TF-free writer), to WORKDIR/eval/<step>.json (with the settings and the seconds each evaluator took),
and to stdout as a table.
"""

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from configs import common
from dream_jax import sample, sharding, summary
from dream_jax.data import eval_sources
from dream_jax.evaluation import alignment, few_shot, fid, linear_probe, shape_classifier, zero_shot
from dream_jax.evaluation import features as features_lib


@dataclasses.dataclass
class Context:
    """What every evaluator needs: the model to evaluate and where its outputs go."""

    config: Any
    workdir: str
    mesh: Any
    variables: Any
    frozen: Any
    tokenizers: Any
    step: int
    use_ema: bool
    log: Callable = print


# -------------------------------------------------------------------------------------------------- settings
def evaluators(config):
    """[(name, settings)] of the enabled evaluators, settings completed with their kind's defaults."""
    out = []
    for name, given in (config.get("evals") or {}).items():
        given = dict(given)
        kind = given.get("kind", name)
        if kind not in common.EVAL_DEFAULTS:
            raise ValueError(f"config.evals.{name}: unknown evaluator kind {kind!r}; expected one of "
                             f"{sorted(common.EVAL_DEFAULTS)} (as the name or its `kind` setting)")
        unknown = sorted(set(given) - set(common.EVAL_DEFAULTS[kind]) - {"kind"})
        if unknown:
            raise ValueError(f"config.evals.{name} has unknown settings {unknown}; a {kind} evaluator takes "
                             f"{sorted(common.EVAL_DEFAULTS[kind])}")
        settings = ml_collections.ConfigDict({**common.EVAL_DEFAULTS[kind], **given, "kind": kind})
        if settings.enabled:
            out.append((name, settings))
    return out


def _labelled(config, name, s, split, num):
    return eval_sources.make_source(s, split, config.tokenizer.image_size, f"config.evals.{name}", num)


def _check_file(path, what, hint):
    if not path:
        raise FileNotFoundError(f"{what} is not set; provide {hint}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what}={path!r} does not exist; provide {hint}")


def validate(config):
    """Raises a FileNotFoundError / ValueError naming the setting for anything an enabled evaluator lacks."""
    for name, s in evaluators(config):
        what = f"config.evals.{name}"
        if s.kind == "zero_shot":
            if s.dataset != "shapes":
                _labelled(config, name, s, s.split, s.num_images).readable_class_names(what)
        elif s.kind == "linear_probe":
            if s.pooling not in features_lib.POOLINGS:
                raise ValueError(f"{what}.pooling={s.pooling!r}; expected one of {features_lib.POOLINGS}")
            _labelled(config, name, s, s.train_split, s.num_train)
            _labelled(config, name, s, s.test_split, s.num_test)
        elif s.kind == "few_shot":
            if s.method not in few_shot.METHODS:
                raise ValueError(f"{what}.method={s.method!r}; expected one of {few_shot.METHODS}")
            _labelled(config, name, s, s.split, s.num_images)
        elif s.kind == "fid":
            _check_file(s.inception_weights, f"{what}.inception_weights", fid.WEIGHTS_HINT)
            if s.prompts != "shapes":
                _check_file(s.prompts, f"{what}.prompts", "'shapes' or a text file with one prompt per line (the "
                            "paper: the captions of held-out CC12M shards)")
            if not (s.reference_stats and os.path.exists(s.reference_stats)) and s.reference != "shapes":
                _check_file(s.reference, f"{what}.reference", "'shapes', a folder of real images, or an existing "
                            f"{what}.reference_stats .npz")
        elif s.kind == "alignment":
            for mode in s.modes:
                alignment.options(config, mode)
            if s.prompts != "shapes":
                _check_file(s.prompts, f"{what}.prompts", "'shapes' or a text file with one prompt per line")
                if s.classifier:
                    raise ValueError(f"{what}.classifier is set but {what}.prompts={s.prompts!r}; the shape "
                                     "classifier's Fréchet distance measures the 'shapes' prompts only")


# ------------------------------------------------------------------------------------------------ evaluators
def _zero_shot(ctx, name, s):
    c = ctx.config
    if s.dataset == "shapes":
        out = zero_shot.shapes_task(c, ctx.variables, ctx.frozen, ctx.tokenizers,
                                    split=eval_sources.shapes_split(s.split),
                                    num_images=s.num_images or 512, batch_size=s.batch_size, seed=s.seed)
        return {"top1": out["zero_shot_top1"], "top5": out["zero_shot_top5"], "chance": out["chance_top1"]}
    source = _labelled(c, name, s, s.split, s.num_images)
    names = source.readable_class_names(f"config.evals.{name}")
    prompts = [[t.format(n) for t in s.templates] for n in names]
    with jax.set_mesh(ctx.mesh):
        class_emb = np.asarray(zero_shot.class_embeddings(c, ctx.variables, ctx.tokenizers, prompts))
    embs, labels = [], []
    for i, (images, y) in enumerate(features_lib.batches(source, s.batch_size)):
        x, n = features_lib.shard_batch(ctx.mesh, c, images)
        with jax.set_mesh(ctx.mesh):
            emb = zero_shot.image_embeddings(c, ctx.variables, ctx.frozen, x, jax.random.key(s.seed + i))
        embs.append(features_lib.fetch(emb)[:n])
        labels.append(y)
    emb, labels = np.concatenate(embs), np.concatenate(labels)
    out = {"top1": zero_shot.accuracy(emb, class_emb, labels, 1), "chance": 1.0 / len(names)}
    if len(names) > 5:
        out["top5"] = zero_shot.accuracy(emb, class_emb, labels, 5)
    return out


def _features(ctx, name, s, split, num):
    source = _labelled(ctx.config, name, s, split, num)
    x, y = features_lib.cached_extract(ctx.config, ctx.variables, ctx.frozen, source, ctx.mesh, ctx.workdir,
                                       ctx.step, ctx.use_ema, s.pooling, s.batch_size, log=ctx.log)
    return x, y, len(source.class_names)


def _linear_probe(ctx, name, s):
    train_x, train_y, num_classes = _features(ctx, name, s, s.train_split, s.num_train)
    test_x, test_y, _ = _features(ctx, name, s, s.test_split, s.num_test)
    return linear_probe.evaluate(train_x, train_y, test_x, test_y, num_classes, tuple(s.lrs), tuple(s.l2s), s.steps,
                                 s.train_batch_size, s.holdout, s.seed)


def _few_shot(ctx, name, s):
    x, y, _ = _features(ctx, name, s, s.split, s.num_images)
    return few_shot.evaluate(x, y, s.ways, s.shots, s.queries, s.episodes, s.seed, s.method, s.ridge)


def _prompts(s, count, what):
    if s.prompts == "shapes":
        return alignment.shapes_prompts(count, s.seed)
    return alignment.read_prompts(s.prompts, count, what), None


def _inception(ctx, inception, images, batch_size, resize):
    """(pool3 [N, F], logits without bias [N, K]) of uint8 images, in batches sharded over the mesh."""
    pools, logits = [], []
    for i in range(0, len(images), batch_size):
        x, n = features_lib.shard_batch(ctx.mesh, ctx.config, np.asarray(images[i:i + batch_size]))
        with jax.set_mesh(ctx.mesh):
            pool3, unbiased = fid.inception_outputs(inception, x, resize)
        pools.append(features_lib.fetch(pool3)[:n])
        logits.append(features_lib.fetch(unbiased)[:n])
    return np.concatenate(pools), np.concatenate(logits)


def _fid_reference(ctx, name, s, inception):
    """(mu, sigma) of the reference images: from reference_stats if it exists, else computed and cached there (or
    under WORKDIR/eval/fid_reference)."""
    if s.reference_stats and os.path.exists(s.reference_stats):
        return fid.load_statistics(s.reference_stats, f"config.evals.{name}.reference_stats")
    size = ctx.config.tokenizer.image_size
    if s.reference == "shapes":
        source = eval_sources.ShapesSource("heldout", s.num_reference, size, seed=s.seed + 3000)
    else:
        source = eval_sources.ImageFolder(s.reference, size, s.num_reference, f"config.evals.{name}.reference")
    path = s.reference_stats or os.path.join(ctx.workdir, "eval", "fid_reference", f"{source.key}_{s.resize}.npz")
    if os.path.exists(path):
        return fid.load_statistics(path)
    ctx.log(f"FID reference statistics of {len(source)} images -> {path}")
    acc = fid.GaussianStats()
    for images, _ in features_lib.batches(source, s.batch_size):
        acc.add(_inception(ctx, inception, images, s.batch_size, s.resize)[0])
    mu, sigma = acc.result()
    if jax.process_index() == 0:
        fid.save_statistics(path, mu, sigma, acc.n)
    return mu, sigma


def _fid(ctx, name, s):
    c = ctx.config
    what = f"config.evals.{name}"
    inception = jax.device_put(fid.load_inception(s.inception_weights, f"{what}.inception_weights"),
                               sharding.replicated(ctx.mesh))
    mu_ref, sigma_ref = _fid_reference(ctx, name, s, inception)
    prompts, _ = _prompts(s, s.num_samples, f"{what}.prompts")
    opts = alignment.options(c, "sad" if s.sad else "plain")
    acc, logits = fid.GaussianStats(), []
    for start in range(0, len(prompts), s.chunk):
        images, _, _ = sample.sample_images(c, ctx.variables, ctx.frozen, ctx.tokenizers,
                                            prompts[start:start + s.chunk], 1, s.seed + start, opts, ctx.mesh,
                                            log=ctx.log)
        pool3, unbiased = _inception(ctx, inception, images[:, 0], s.batch_size, s.resize)
        acc.add(pool3)
        logits.append(unbiased)
        ctx.log(f"FID: {acc.n}/{len(prompts)} generated images through Inception")
    mu, sigma = acc.result()
    out = {"fid": fid.frechet_distance(mu, sigma, mu_ref, sigma_ref), "num_samples": float(acc.n)}
    if s.inception_score:
        out["inception_score"], out["inception_score_std"] = fid.inception_score(np.concatenate(logits),
                                                                                 min(10, acc.n))
    return out


def _alignment(ctx, name, s):
    prompts, targets = _prompts(s, s.num_prompts, f"config.evals.{name}.prompts")
    if s.classifier:  # validate() allows it only with the 'shapes' prompts
        size = ctx.config.tokenizer.image_size
        classifier = shape_classifier.load_or_train(s.classifier, size, log=ctx.log)
        reference = shape_classifier.statistics(classifier,
                                                shape_classifier.reference_images(s.num_reference, size, s.seed))
    out = {}
    for mode in s.modes:
        metrics, images = alignment.evaluate(ctx.config, ctx.variables, ctx.frozen, ctx.tokenizers, ctx.mesh,
                                             prompts, s.samples_per_prompt, mode, targets, s.seed, log=ctx.log)
        if s.classifier:
            metrics["frechet"] = shape_classifier.frechet(classifier, images.reshape((-1,) + images.shape[2:]),
                                                          reference)
        out.update({f"{mode}/{k}": v for k, v in metrics.items()})
    return out


RUNNERS = {"zero_shot": _zero_shot, "linear_probe": _linear_probe, "few_shot": _few_shot, "fid": _fid,
           "alignment": _alignment}


# ---------------------------------------------------------------------------------------------------- driver
def run_evaluators(ctx):
    """{'<name>/<metric>': float} of every enabled evaluator, and the seconds each took."""
    metrics, seconds = {}, {}
    for name, s in evaluators(ctx.config):
        start = time.monotonic()
        ctx.log(f"evaluating {name} ({s.kind})")
        out = RUNNERS[s.kind](ctx, name, s)
        metrics.update({f"{name}/{k}": float(v) for k, v in out.items()})
        seconds[name] = time.monotonic() - start
    return metrics, seconds


def format_table(step, metrics, use_ema):
    width = max([len(k) for k in metrics] + [6])
    lines = [f"evaluation at step {step} ({'EMA' if use_ema else 'raw'} weights)", f"{'metric':<{width}}  value",
             f"{'-' * width}  ---------"]
    lines += [f"{k:<{width}}  {v:.4f}" for k, v in sorted(metrics.items())]
    return "\n".join(lines)


def record(config, workdir, step, metrics, seconds, use_ema):
    """Writes metrics to TensorBoard + JSONL under WORKDIR/eval and to WORKDIR/eval/<step>.json; returns the path."""
    path = os.path.join(workdir, "eval", f"{step}.json")
    if jax.process_index() != 0:
        return path
    writer = summary.Writer(os.path.join(workdir, "eval"))
    writer.scalars(step, metrics)
    writer.close()
    evals = {name: s.to_dict() for name, s in evaluators(config)}
    with open(path + ".tmp", "w") as f:
        json.dump({"step": int(step), "use_ema": bool(use_ema), "metrics": metrics, "seconds": seconds,
                   "evals": evals}, f, indent=2, default=list)
    os.replace(path + ".tmp", path)
    return path


def evaluate_variables(config, workdir, variables, step, mesh, frozen, tokenizers, use_ema=True, log=print):
    """Runs, records and prints the evaluators on in-memory variables; returns the metrics."""
    if not evaluators(config):
        log("config.evals enables no evaluator; nothing to do")
        return {}
    ctx = Context(config, workdir, mesh, variables, frozen, tokenizers, int(step), use_ema, log)
    metrics, seconds = run_evaluators(ctx)
    path = record(config, workdir, step, metrics, seconds, use_ema)
    if jax.process_index() == 0:
        print(format_table(step, metrics, use_ema), flush=True)
        print(f"wrote {path}", flush=True)
    return metrics


def evaluate_workdir(config, workdir, use_ema=None):
    """The `--mode=eval` job: newest checkpoint (EMA weights unless use_ema=False or config.sampling.use_ema is
    off), every enabled evaluator of config.evals; returns {'<name>/<metric>': value}."""
    validate(config)
    use_ema = config.sampling.use_ema if use_ema is None else use_ema
    restore_config = ml_collections.ConfigDict(config.to_dict())
    restore_config.sampling.use_ema = use_ema
    mesh, tokenizers, variables, step, frozen = sample.restore_for_inference(restore_config, workdir)
    return evaluate_variables(config, workdir, variables, step, mesh, frozen, tokenizers, use_ema)


def maybe_evaluate(config, workdir, step, state, mesh, frozen, tokenizers, use_ema=None):
    """The train loop's periodic evaluation: every `config.eval_every` steps (0 = never); metrics or None."""
    every = config.get("eval_every", 0)
    if not every or step % every:
        return None
    use_ema = config.sampling.use_ema if use_ema is None else use_ema
    return evaluate_variables(config, workdir, state_variables(state, use_ema), step, mesh, frozen, tokenizers,
                              use_ema)


def state_variables(state, use_ema):
    """A train state's {'params' (EMA or raw), 'batch_stats'}, as the evaluators take them."""
    return {"params": state.ema_params if use_ema else state.params, "batch_stats": state.batch_stats}
