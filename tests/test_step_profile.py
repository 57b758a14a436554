"""benchmarks/step_profile.py: which trace events count as XLA ops, how they group, and that a real jax.profiler
trace of a jitted function on this CPU yields its ops (the trace format it reads)."""

import os
import sys

import jax
import jax.numpy as jnp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import step_profile  # noqa: E402


def _event(name, tid, dur):
    return {"ph": "X", "pid": 1, "tid": tid, "name": name, "dur": dur}


def test_groups_ops_of_xla_threads_by_name_without_suffix():
    threads = {(1, 10): "tf_XLAEigen/123", (1, 11): "tf_XLAPjRtCpuClient/4", (1, 12): "python"}
    events = [
        _event("ynn_fusion.663", 10, 3.0), _event("ynn_fusion.7", 11, 2.0), _event("dot", 10, 1.5),
        _event("end: dot", 10, 9.0),                      # the runtime's completion marker
        _event("ThunkExecutor::Execute", 10, 50.0),       # the runtime, not an op
        _event("ynn_fusion.1", 12, 40.0),                 # not on an XLA thread
        {"ph": "M", "pid": 1, "tid": 10, "name": "thread_name", "args": {"name": "tf_XLAEigen/123"}},
    ]
    assert step_profile.op_groups(events, threads) == {"ynn_fusion": [5.0, 2], "dot": [1.5, 1]}


def test_a_real_trace_yields_the_jitted_functions_ops(tmp_path):
    f = jax.jit(lambda a, b: jnp.tanh(a @ b) + 1.0)
    a = jnp.ones((256, 256))
    f(a, a).block_until_ready()
    jax.profiler.start_trace(str(tmp_path))
    for _ in range(3):
        f(a, a).block_until_ready()
    jax.profiler.stop_trace()
    groups = step_profile.op_groups(*step_profile.trace_events(str(tmp_path)))
    assert groups and all(t > 0 and n >= 3 for t, n in groups.values())
