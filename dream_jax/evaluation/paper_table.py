"""The paper's results table beside an evaluation's metrics: one line per column of DREAM's table (PAPER.md §5).

`--mode=eval` prints it after the metric table, so a user sees which of the seven columns this run measured, with
what number, and how to switch on the ones it did not (an evaluator that needs the user's weights or data is off
by default and says which setting to provide). The numbers are DREAM's in the paper, at its scale and data; each
of the run's values names its evaluator and dataset: the tiny config's, on the embedded shapes, are the same
protocols on other data, not the paper's numbers.
"""

import dataclasses

from dream_jax.evaluation import registry


@dataclasses.dataclass(frozen=True)
class Column:
    title: str      # the paper's column
    kind: str       # the evaluator kind that measures it
    metric: str     # its headline metric
    paper: float    # DREAM's value in the paper
    needs: str      # what a user provides to switch the evaluator on, if it is off by default


COLUMNS = (
    Column("ImageNet linear probe top-1 (%)", "linear_probe", "top1", 72.7, "a prepared tfds dataset"),
    Column("ImageNet fine-tune top-1 (%)", "finetune", "top1", 82.7, "a prepared tfds dataset"),
    Column("few-shot 5-way 5-shot (%)", "few_shot", "accuracy", 90.1, "a prepared tfds dataset"),
    Column("ADE20K segmentation mIoU (%)", "segmentation", "miou", 36.8, "a prepared tfds dataset"),
    Column("NYU-v2 depth RMSE (m)", "depth", "rmse", 0.60, "a prepared tfds dataset"),
    Column("CC12M FID", "fid", "fid", 4.25, "inception_weights, prompts and reference"),
    Column("CLIP Score", "clip_score", "clip_score", 30.1, "weights (a local CLIP checkpoint) and bpe_vocab"),
)

# Accuracies are fractions in our metrics and percentages in the paper.
_PERCENT = {"linear_probe", "finetune", "few_shot", "segmentation"}


def _value(column, metrics, name):
    value = metrics.get(f"{name}/{column.metric}")
    if value is None:
        return "no metric"
    return f"{100 * value:.1f}" if column.kind in _PERCENT else f"{value:.3f}"


def _where(name, settings):
    """The evaluator's name and, where it reads a dataset, which: the tiny config's numbers are the embedded set's."""
    return f"{name} on {settings['dataset']}" if settings.get("dataset") else name


def rows(config, metrics):
    """[(column title, paper value, this run's value or why it has none)] for every column of the paper's table."""
    entries = [(name, dict(s)) for name, s in (config.get("evals") or {}).items()]
    enabled = {name for name, _ in registry.enabled(config)}
    out = []
    for column in COLUMNS:
        names = [name for name, s in entries if s.get("kind", name) == column.kind]
        if not names:
            text = f"not configured (add a {column.kind} entry to config.evals)"
        else:
            ran = [f"{_value(column, metrics, n)} ({_where(n, dict(entries)[n])})" for n in names if n in enabled]
            text = "; ".join(ran) or (f"off: --config.evals.{names[0]}.enabled=True with {column.needs}")
        out.append((column.title, column.paper, text))
    return out


def format_rows(config, metrics):
    """The paper-table lines that `--mode=eval` prints after its metric table."""
    table = rows(config, metrics)
    width = max(len(title) for title, _, _ in table)
    lines = ["the paper's table (DREAM's value) and this run", f"{'column':<{width}}  paper  this run"]
    lines += [f"{title:<{width}}  {paper:>5g}  {text}" for title, paper, text in table]
    return "\n".join(lines)
