"""`--mode=eval` and periodic evaluation: runs the evaluators that `config.evals` names and records their metrics.

`config.evals` maps a name to one evaluator's settings (kinds: evaluation/registry.py, each kind's settings its
DEFAULTS; protocols: docs/EVALUATION.md). Settings missing from a config take the kind's defaults; a misspelt one is an
error. Before anything is restored, every enabled evaluator checks that what it needs exists (datasets prepared,
weights and prompt files present) and fails with a message naming the setting to provide.

Metrics are named `<evaluator name>/<metric>`; they go to TensorBoard and metrics.jsonl under WORKDIR/eval (the
project's TF-free writer), to WORKDIR/eval/<step>.json (with the settings and the seconds each evaluator took),
and to stdout as a table.
"""

import json
import os
import time

import jax

from dream_jax import runtime, summary
from dream_jax.evaluation import interface, paper_table, registry


def validate(config):
    """Raises a FileNotFoundError / ValueError naming the setting for anything an enabled evaluator lacks."""
    for name, s in registry.enabled(config):
        registry.KINDS[s.kind].validate(config, name, s)


def run_evaluators(ctx):
    """{'<name>/<metric>': float} of every enabled evaluator, and the seconds each took."""
    metrics, seconds = {}, {}
    for name, s in registry.enabled(ctx.config):
        start = time.monotonic()
        ctx.log(f"evaluating {name} ({s.kind})")
        out = registry.KINDS[s.kind].run(ctx, name, s)
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
    evals = {name: s.to_dict() for name, s in registry.enabled(config)}
    with open(path + ".tmp", "w") as f:
        json.dump({"step": int(step), "use_ema": bool(use_ema), "metrics": metrics, "seconds": seconds,
                   "evals": evals}, f, indent=2, default=list)
    os.replace(path + ".tmp", path)
    return path


def evaluate_variables(rt, workdir, variables, step, use_ema=True, log=print):
    """Runs, records and prints the evaluators of rt.config on in-memory variables; returns the metrics."""
    if not registry.enabled(rt.config):
        log("config.evals enables no evaluator; nothing to do")
        return {}
    ctx = interface.make_context(rt, workdir, variables, step, use_ema, log)
    metrics, seconds = run_evaluators(ctx)
    path = record(rt.config, workdir, step, metrics, seconds, use_ema)
    if jax.process_index() == 0:
        print(format_table(step, metrics, use_ema), flush=True)
        print(f"wrote {path}", flush=True)
    return metrics


def evaluate_workdir(config, workdir, use_ema=None):
    """The `--mode=eval` job: newest checkpoint (EMA weights unless use_ema=False or config.sampling.use_ema is
    off), every enabled evaluator of config.evals; returns {'<name>/<metric>': value}."""
    validate(config)
    use_ema = config.sampling.use_ema if use_ema is None else use_ema
    rt = runtime.create(config)
    variables, step = runtime.restore_variables(rt, workdir, use_ema)
    metrics = evaluate_variables(rt, workdir, variables, step, use_ema)
    if jax.process_index() == 0:
        print(paper_table.format_rows(config, metrics), flush=True)
    return metrics


def maybe_evaluate(rt, workdir, step, state, use_ema=None):
    """The train loop's periodic evaluation: every `config.eval_every` steps (0 = never); metrics or None."""
    every = rt.config.get("eval_every", 0)
    if not every or step % every:
        return None
    use_ema = rt.config.sampling.use_ema if use_ema is None else use_ema
    return evaluate_variables(rt, workdir, runtime.state_variables(state, use_ema), step, use_ema)
