"""The prompts of the generation evaluators (alignment, FID): held-out captions of the synthetic set, whose
attributes the oracle reads back, or the lines of a text file (sampler.read_prompts, the one prompt-file reader).

Dimension letters: P prompts.
"""

import numpy as np

from dream_jax.data import synthetic
from dream_jax.generation import sampler

HINT = "'shapes' or a text file with one prompt per line"


def shapes_prompts(num_prompts, seed=0):
    """Held-out captions of the synthetic set and their attributes ({attribute: int [P]})."""
    source = synthetic.CaptionedShapes("heldout", num_examples=num_prompts, seed=seed + 2000)
    items = [source[i] for i in range(num_prompts)]
    targets = {a: np.array([int(it[a]) for it in items], np.int32) for a in synthetic.ATTRIBUTES}
    return [it["caption"] for it in items], targets


def read_prompts(path, num_prompts, what):
    """The first `num_prompts` prompts of a file (one per line), cycled when the file has fewer."""
    if not path:
        raise FileNotFoundError(f"{what} is not set; provide a text file with one prompt per line")
    prompts = sampler.read_prompts(path, None)
    return [prompts[i % len(prompts)] for i in range(num_prompts)]


def of_settings(s, count, what):
    """(prompts, oracle targets or None) of an evaluator's `prompts` setting ('shapes' or a file)."""
    if s.prompts == "shapes":
        return shapes_prompts(count, s.seed)
    return read_prompts(s.prompts, count, what), None
