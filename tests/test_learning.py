"""End to end on the embedded default: a tiny DREAM trained from scratch here learns zero-shot shape x colour
classification, and `--mode=sample` on its workdir writes a grid and a JSON of distinct, scored samples."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import train_helpers as th
from configs import dream_tiny
from dream_jax import frontend, sample, sharding, state, train
from dream_jax.data import oracle, synthetic
from dream_jax.evaluation import zero_shot

pytestmark = pytest.mark.xdist_group("trained_tiny")

STEPS = 200


def learning_config():
    c = dream_tiny.get_config()
    c.total_steps = STEPS
    c.steps_per_epoch = STEPS // 48 + 1  # the 48-epoch masking warmup compressed into the run
    c.checkpoint_every = STEPS
    c.log_every = 50
    c.mesh.num_devices = 1  # 8 fake devices on 2 cores only add overhead here
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("tiny"))
    config = learning_config()
    train.train_and_evaluate(config, workdir)
    return config, workdir


def _zero_shot(config, variables):
    tokenizers = frontend.make_tokenizers(config)
    frozen = frontend.load_frozen(config, tokenizers)
    return zero_shot.shapes_task(config, variables, frozen, tokenizers, num_images=256)


def test_random_model_is_near_chance():
    config = learning_config()
    st = state.create_state(config, sharding.make_mesh(config))
    result = _zero_shot(config, {"params": st.params, "batch_stats": st.batch_stats})
    assert result["zero_shot_top1"] < 3 * result["chance_top1"]


def test_trained_model_zero_shot_is_far_above_chance(trained):
    config, workdir = trained
    mesh = sharding.make_mesh(config)
    variables, step = sample.restore_variables(config, workdir, mesh)
    assert step == STEPS
    result = _zero_shot(config, variables)
    print("zero-shot", result)
    assert result["zero_shot_top1"] > 4 * result["chance_top1"]


def test_sample_mode_writes_grid_and_json(trained, tmp_path):
    config, workdir = trained
    prompts = [synthetic.caption(s, c, 4, 1, 0) for s, c in [(0, 0), (1, 2), (2, 3), (3, 5), (1, 1), (0, 6)]]
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(prompts) + "\n")
    cmd = [sys.executable, "-m", "dream_jax.main", "--config=configs/dream_tiny.py", f"--workdir={workdir}",
           "--mode=sample", f"--prompts={path}", "--num_samples=4", "--seed=3", "--config.mesh.num_devices=1"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    png = os.path.join(workdir, "samples", f"grid_step{STEPS}_seed3.png")
    record = json.load(open(os.path.join(workdir, "samples", f"samples_step{STEPS}_seed3.json")))
    assert os.path.getsize(png) > 0
    assert record["prompts"] == prompts and len(record["images"]) == len(prompts) * 4
    assert all(len(im["sad_scores"]) == config.sampling.num_candidates for im in record["images"])
    assert len({tuple(im["sad_scores"]) for im in record["images"]}) > 1, "candidates should be scored apart"
    from PIL import Image

    grid = np.asarray(Image.open(png).convert("RGB"))
    images = th.grid_cells(grid, rows=len(prompts), cols=4, size=config.tokenizer.image_size)
    assert images.std() > 1 and len({im.tobytes() for im in images.reshape((-1,) + images.shape[2:])}) == 24
    # The oracle's prompt alignment of these samples is reported, not asserted: after 200 steps the tiny
    # generator does not yet follow the text (see docs/BENCHMARKS.md); tests/test_generation_e2e.py trains longer.
    attrs = oracle.read_attributes(images.reshape((-1,) + images.shape[2:]))
    target = np.repeat([c for _, c in [(0, 0), (1, 2), (2, 3), (3, 5), (1, 1), (0, 6)]], 4)
    print("colour alignment", float(np.mean(attrs["color"] == target)))
