"""The FID evaluator end to end on the tiny config: samples from a (random-init) tiny DREAM and reference images
of the synthetic set go through a random-weight FID Inception loaded from a .pth; the reference statistics are
cached and reused."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest
import torch

import inception_reference
import train_helpers as th
from dream_jax import runtime, sharding, state
from dream_jax.evaluation import fid, interface, registry, run


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # 10 samples in 2048 dimensions
def test_fid_evaluator_generates_scores_and_caches_the_reference(tmp_path, capsys):
    weights = str(tmp_path / "inception.pth")
    torch.save(inception_reference.random_model(seed=1).state_dict(), weights)
    config = th.tiny_config()
    config.sampling.update(dict(num_iter=2, batch_size=8))  # every batch below has 8 images: one compile each
    config.diffusion.sampling_steps = 3
    config.evals = ml_collections.ConfigDict(dict(fid=registry.settings(
        "fid", inception_weights=weights, prompts="shapes", reference="shapes", num_samples=8, num_reference=8,
        sad=False, batch_size=8, chunk=8)))
    run.validate(config)
    mesh = sharding.make_mesh(config, jax.devices()[:1])  # one device: the 8 fake ones would split 2 cores
    st = state.create_state(config, mesh)
    variables = {"params": st.params, "batch_stats": st.batch_stats}
    rt = runtime.create(config, mesh)
    workdir = str(tmp_path / "run")

    metrics = run.evaluate_variables(rt, workdir, variables, 0, use_ema=False)
    assert set(metrics) == {"fid/fid", "fid/num_samples", "fid/inception_score", "fid/inception_score_std"}
    assert metrics["fid/num_samples"] == 8 and np.isfinite(metrics["fid/fid"]) and metrics["fid/fid"] > 0
    assert metrics["fid/inception_score"] >= 1.0
    reference = os.listdir(os.path.join(workdir, "eval", "fid_reference"))
    assert reference == ["shapes-shape_color_heldout_8_32_seed3000_tf1.npz"]
    record = json.load(open(os.path.join(workdir, "eval", "0.json")))
    assert record["use_ema"] is False and record["metrics"] == metrics

    # The cached reference statistics are read back instead of running Inception on the reference again.
    logged = []
    ctx = interface.make_context(rt, workdir, variables, 0, False, logged.append)
    name, settings = registry.enabled(config)[0]
    mu, sigma = fid.reference_statistics(ctx, name, settings, None)
    assert logged == [] and mu.shape == (2048,) and sigma.shape == (2048, 2048)
