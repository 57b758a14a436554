"""benchmarks/compile_split.py: one program's trace, lower and compile times and its optimised HLO's size."""

import os
import sys

import jax
import jax.numpy as jnp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import compile_split  # noqa: E402
from configs import dream_tiny  # noqa: E402
from dream_jax import sharding  # noqa: E402


def test_times_a_fresh_jit_and_counts_its_instructions():
    config = dream_tiny.get_config()
    config.mesh.num_devices = 1
    mesh = sharding.make_mesh(config)
    x = jnp.ones((4, 4))
    small = compile_split.time_program(lambda: jax.jit(lambda a: a * 2 + 1), (x,), config, mesh)
    large = compile_split.time_program(lambda: jax.jit(lambda a: jnp.tanh(a @ a.T) * 2 + jnp.exp(a).sum(0)), (x,),
                                       config, mesh)
    assert all(t >= 0 for t in small[:3]) and small[2] > 0
    assert 2 <= small[3] < large[3]
