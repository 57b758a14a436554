"""The end-of-training report: a sample grid of the fixed prompts, the named evaluators, and a short summary.

`config.final_samples` samples per default prompt (sampler.DEFAULT_PROMPTS, seed 0) go to WORKDIR/samples as
`--mode=sample` writes them; the `config.evals` entries named in `config.final_evals` run on the final weights (EMA
unless config.sampling.use_ema is off), enabled or not, and are recorded in WORKDIR/eval/<step>.json as
`--mode=eval` records them. The summary prints zero-shot top-1 and, per attribute, the oracle alignment of every
decoding mode beside chance, so a user sees at a glance whether the model learnt both of DREAM's objectives, and
how many samples SAD got right that plain decoding got wrong and the reverse, with McNemar's p.
"""

import dataclasses
import time

import ml_collections

from dream_jax.data import synthetic
from dream_jax.evaluation import run as eval_run
from dream_jax.generation import sample, sampler

# Chance of an oracle match per attribute: one uniformly drawn value of each attribute's table.
CHANCE = {"shape": 1 / len(synthetic.SHAPES), "color": 1 / len(synthetic.COLORS),
          "position": 1 / len(synthetic.POSITIONS), "size": 1 / len(synthetic.SIZES),
          "shape_color": 1 / (len(synthetic.SHAPES) * len(synthetic.COLORS))}


def validate(config):
    """ValueError for a final_evals name that config.evals lacks or a negative final_samples; then what
    evaluation.run.validate says of the final evaluators (a missing file fails before training, not after)."""
    names = tuple(config.get("final_evals", ()))
    unknown = sorted(set(names) - set(config.get("evals") or {}))
    if unknown:
        raise ValueError(f"config.final_evals names {unknown}, which config.evals lacks; expected some of "
                         f"{sorted(config.get('evals') or {})}")
    if config.get("final_samples", 0) < 0:
        raise ValueError(f"config.final_samples={config.final_samples} must be >= 0 (0: no sample grid)")
    if names:
        eval_run.validate(final_config(config))


def final_config(config):
    """The config with only the final_evals entries of config.evals, each enabled."""
    out = ml_collections.ConfigDict(config.to_dict())
    out.evals = {name: dict(config.evals[name].to_dict(), enabled=True) for name in config.final_evals}
    return out


def summary(step, seconds, metrics, grid=None, report_seconds=None):
    """The short text the train job prints at its end, from evaluate_variables' metrics. `seconds`: the training's
    wall time; `report_seconds`: this report's own (grid and evaluators, compilation included)."""
    spent = "" if report_seconds is None else f", this report {report_seconds / 60:.1f} min"
    lines = [f"summary after {step} steps (training {seconds / 60:.1f} min wall, compilation included{spent})"]
    for key in sorted(k for k in metrics if k.endswith("/top1")):
        name = key[:-len("/top1")]
        chance = metrics.get(f"{name}/chance")
        lines.append(f"  {name}: top-1 {metrics[key]:.3f}" + ("" if chance is None else f" (chance {chance:.3f})"))
    for name in sorted({k.split("/")[0] for k in metrics if "/oracle_" in k}):
        modes = sorted({k.split("/")[1] for k in metrics if k.startswith(name + "/") and "/oracle_" in k})
        versus = [m for m in modes if f"{name}/{m}_vs_plain/shape_p" in metrics]
        paired = "".join(f"; {m} vs plain: samples gained / lost, McNemar p" for m in versus)
        lines.append(f"  {name}: samples matching the prompt, {' / '.join(modes)} (chance){paired}")
        for attribute, chance in CHANCE.items():
            rates = " / ".join(f"{metrics[f'{name}/{m}/oracle_{attribute}']:.3f}" for m in modes)
            counts = "".join(_versus(metrics, f"{name}/{m}_vs_plain/{attribute}") for m in versus)
            lines.append(f"    {attribute:<12} {rates}  ({chance:.3f}){counts}")
    if grid:
        lines.append(f"  sample grid: {grid}")
    return "\n".join(lines)


def _versus(metrics, prefix):
    """'  +G -L p=P' of one paired comparison (alignment.against_plain's keys under `prefix`)."""
    return (f"  +{metrics[prefix + '_gained']:.0f} -{metrics[prefix + '_lost']:.0f} "
            f"p={metrics[prefix + '_p']:.2f}")


def run(rt, workdir, variables, step, seconds):
    """Writes the grid, runs and records the final evaluators, prints the summary; returns (metrics, grid path).
    `seconds`: the training's wall time, which the summary prints beside the report's own."""
    config = rt.config
    if not (config.get("final_samples", 0) or config.get("final_evals", ())):
        return {}, None
    grid, start = None, time.monotonic()
    if config.get("final_samples", 0):
        prompts = sampler.read_prompts(None, config)
        # Padded to the sampler's chunk: the alignment evaluator's SAD then runs the grid's compiled program.
        grid, _ = sample.write_samples(rt, workdir, variables, step, prompts, config.final_samples, seed=0,
                                       pad="alignment" in config.final_evals)
    metrics = {}
    if config.get("final_evals", ()):
        final = dataclasses.replace(rt, config=final_config(config))
        metrics = eval_run.evaluate_variables(final, workdir, variables, step, config.sampling.use_ema)
    print(summary(step, seconds, metrics, grid, time.monotonic() - start), flush=True)
    return metrics, grid
