"""End to end, the generator: `python -m dream_jax.main` trains the embedded default briefly, `--mode=sample`
draws held-out prompts with the config's own sampler (SAD), and the oracle reads the prompted position back from
the PNG grid far more often than chance.

The tiny generator follows the text only after 700-800 training steps (benchmarks/generation_onset.py,
docs/BENCHMARKS.md): before that its diffusion head ignores the decoder's z. This is the suite's longest test
(STEPS at batch 32, the 48-epoch warmup compressed into the run); its own xdist group runs it beside the rest.
"""

import os

import numpy as np
import pytest
from PIL import Image

import train_helpers as th
from dream_jax.data import oracle, synthetic

pytestmark = pytest.mark.xdist_group("generation_e2e")

STEPS = 1000
NUM_PROMPTS = 64


def test_briefly_trained_tiny_model_draws_the_prompted_position(tmp_path):
    workdir, env = tmp_path / "run", th.subprocess_env(tmp_path / "cache")
    config = [f"--config={th.CONFIG_FILE}", f"--workdir={workdir}", f"--config.total_steps={STEPS}",
              f"--config.steps_per_epoch={STEPS // 48 + 1}", "--config.batch_size=32",
              f"--config.checkpoint_every={STEPS}"]
    code, out = th.run(config, env, tmp_path / "train.log", timeout=1800)
    assert code == 0, out[-2000:]

    source = synthetic.CaptionedShapes("heldout", num_examples=NUM_PROMPTS, seed=0)
    items = [source[i] for i in range(NUM_PROMPTS)]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(it["caption"] + "\n" for it in items))
    code, out = th.run(config + ["--mode=sample", f"--prompts={prompts}", "--num_samples=1", "--seed=0"], env,
                       tmp_path / "sample.log", timeout=600)
    assert code == 0, out[-2000:]
    grid = np.asarray(Image.open(os.path.join(workdir, "samples", f"grid_step{STEPS}_seed0.png")).convert("RGB"))
    images = th.grid_cells(grid, rows=NUM_PROMPTS, cols=1, size=32)[:, 0]
    read = oracle.read_attributes(images)
    rates = {k: float(np.mean(read[k] == np.array([it[k] for it in items]))) for k in ("position", "color", "shape")}
    print("alignment", rates)
    # Chance is 1/5 for the position; a prompt-blind generator matches more than 22 of 64 with probability 0.002.
    assert rates["position"] > 0.35, rates
