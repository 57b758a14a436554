"""Paired comparison of two decoding modes on the same prompts: McNemar's exact test.

Two modes sampled from the same prompts (and, in the alignment evaluator, the same random numbers) are compared
sample by sample: only the discordant pairs carry evidence, `gained` (right in mode A, wrong in mode B) against
`lost` (the reverse). Under "no difference" each discordant pair is a fair coin, so the two-sided p-value is
P(Binomial(gained + lost, 1/2) at least as far from its mean as observed). With a few hundred prompts one sample is
under half a percent of a rate, the size of SAD's effect on the embedded default: the counts and p say whether a
difference of a few samples is one.

Dimension letters: N paired samples.
"""

import math

import numpy as np


def mcnemar_p(gained: int, lost: int) -> float:
    """Exact two-sided McNemar p-value: 2 P(Binomial(n, 1/2) <= min(gained, lost)), at most 1 (1 with no
    discordant pair)."""
    if gained < 0 or lost < 0:
        raise ValueError(f"gained={gained} and lost={lost} must be counts >= 0")
    n = gained + lost
    tail = sum(math.comb(n, i) for i in range(min(gained, lost) + 1))
    return min(1.0, 2 * tail / 2 ** n)


def compare(hits_a, hits_b) -> dict[str, float]:
    """{'gained', 'lost', 'p'} of mode A against mode B from their per-sample hits (bool [N] each, same order)."""
    a, b = np.asarray(hits_a, bool), np.asarray(hits_b, bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired hits need the same [N] shape; got {a.shape} and {b.shape}")
    gained, lost = int(np.sum(a & ~b)), int(np.sum(~a & b))
    return {"gained": float(gained), "lost": float(lost), "p": mcnemar_p(gained, lost)}
