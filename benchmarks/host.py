"""What machine a benchmark ran on: the CPU's model and cores, and a float32 matmul's speed measured in the calling
process, the reference that tells two hosts (or two hours of one shared host) apart.

The same CPU-bound job took 8.9 minutes on one day and 12.8 on another here, with the code unchanged: the host's
matmul speed moved with it (0.30 vs 0.18 TFLOP/s), so a wall time is only read together with the matmul speed
measured beside it.
"""

import os
import platform
import time

import jax
import jax.numpy as jnp


def cpu_name():
    """The CPU's model name (Linux /proc/cpuinfo), else platform.processor() or the machine type."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device():
    """'<CPU model>, <N> cores (<OS>)'."""
    return f"{cpu_name()}, {os.cpu_count()} cores ({platform.system()})"


def matmul_flops(dtype=jnp.float32, size=2048, reps=10):
    """FLOP/s of an N x N matmul in `dtype` on the default device, best of `reps`."""
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best
