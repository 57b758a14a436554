"""The evaluator kinds of `config.evals` and their settings.

A kind is a module of dream_jax/evaluation with DEFAULTS, validate(config, name, settings) and run(ctx, name,
settings) (interface.py). Adding one is one module and one line here. `config.evals` maps a name to a kind's
settings (`kind` defaults to the name, so one kind can run twice, e.g. on two datasets); settings a config leaves
out take the kind's DEFAULTS, and a misspelt one is an error.
"""

import ml_collections

from dream_jax.evaluation import alignment, few_shot, fid, linear_probe, zero_shot
from dream_jax.evaluation import depth, segmentation
from dream_jax.evaluation import finetune
from dream_jax.evaluation import clip_score

KINDS = {"zero_shot": zero_shot, "linear_probe": linear_probe, "few_shot": few_shot, "fid": fid,
         "alignment": alignment, "segmentation": segmentation, "depth": depth, "finetune": finetune,
         "clip_score": clip_score}


def settings(kind, **overrides):
    """A full settings dict of an evaluator kind, with overrides (a misspelt one is a ValueError)."""
    if kind not in KINDS:
        raise ValueError(f"unknown evaluator kind {kind!r}; expected one of {sorted(KINDS)}")
    unknown = sorted(set(overrides) - set(KINDS[kind].DEFAULTS))
    if unknown:
        raise ValueError(f"evaluator {kind!r} has no settings {unknown}; expected some of "
                         f"{sorted(KINDS[kind].DEFAULTS)}")
    return dict(KINDS[kind].DEFAULTS, kind=kind, **overrides)


def enabled(config):
    """[(name, settings)] of the enabled evaluators of config.evals, settings completed with their kind's
    DEFAULTS."""
    out = []
    for name, given in (config.get("evals") or {}).items():
        given = dict(given)
        kind = given.get("kind", name)
        if kind not in KINDS:
            raise ValueError(f"config.evals.{name}: unknown evaluator kind {kind!r}; expected one of "
                             f"{sorted(KINDS)} (as the name or its `kind` setting)")
        defaults = KINDS[kind].DEFAULTS
        unknown = sorted(set(given) - set(defaults) - {"kind"})
        if unknown:
            raise ValueError(f"config.evals.{name} has unknown settings {unknown}; a {kind} evaluator takes "
                             f"{sorted(defaults)}")
        s = ml_collections.ConfigDict({**defaults, **given, "kind": kind})
        if s.enabled:
            out.append((name, s))
    return out
