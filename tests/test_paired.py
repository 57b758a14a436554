"""McNemar's exact test of two decoding modes (evaluation/paired.py) and the alignment evaluator's use of it."""

import numpy as np
import pytest
from scipy import stats

from dream_jax.evaluation import alignment, paired


@pytest.mark.parametrize("gained,lost", [(0, 0), (1, 0), (5, 5), (9, 2), (2, 9), (0, 7), (40, 25), (300, 260)])
def test_mcnemar_p_is_scipys_two_sided_binomial_test(gained, lost):
    expected = 1.0 if gained + lost == 0 else stats.binomtest(gained, gained + lost, 0.5).pvalue
    assert paired.mcnemar_p(gained, lost) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_p_by_hand():
    assert paired.mcnemar_p(3, 0) == 2 / 8  # both all-or-nothing tails of 3 fair coins
    assert paired.mcnemar_p(4, 1) == 2 * 6 / 32  # P(X <= 1) = (1 + 5) / 32, doubled


def test_compare_counts_only_discordant_pairs():
    a = np.array([1, 1, 0, 0, 1, 1, 1], bool)
    b = np.array([1, 0, 1, 0, 0, 0, 1], bool)
    assert paired.compare(a, b) == {"gained": 3.0, "lost": 1.0, "p": 2 * 5 / 16}
    with pytest.raises(ValueError, match="same"):
        paired.compare(a, b[:3])
    with pytest.raises(ValueError, match="counts"):
        paired.mcnemar_p(-1, 2)


def test_against_plain_compares_every_other_mode_per_attribute():
    plain = {"shape": np.array([1, 0, 0, 1], bool), "color": np.array([1, 1, 1, 1], bool)}
    sad = {"shape": np.array([1, 1, 1, 0], bool), "color": np.array([1, 1, 1, 1], bool)}
    out = alignment.against_plain({"plain": plain, "sad": sad})
    assert out == {"sad_vs_plain/shape_gained": 2.0, "sad_vs_plain/shape_lost": 1.0, "sad_vs_plain/shape_p": 1.0,
                   "sad_vs_plain/color_gained": 0.0, "sad_vs_plain/color_lost": 0.0, "sad_vs_plain/color_p": 1.0}
    # Gained minus lost is the difference of the two match rates, in samples.
    assert (out["sad_vs_plain/shape_gained"] - out["sad_vs_plain/shape_lost"]) / 4 == sad["shape"].mean() - plain[
        "shape"].mean()
    assert alignment.against_plain({"sad": sad}) == {}
