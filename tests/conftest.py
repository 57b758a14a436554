"""Test setup, before jax is imported: 8 fake CPU devices for sharding tests, one compilation cache, malloc on huge
pages, one core per xdist worker; the longest modules first."""
import os

from xla_flags import FAST_COMPILE

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8 " + FAST_COMPILE
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the session: both xdist workers and every subprocess they start (which
# inherit the environment) compile a program another test already compiled (the tiny train step, the sampler,
# the evaluators) once. It lives in pytest's cache directory, so a clean clone starts cold, as CI does.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "d", "jax_compilation_cache_suite"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# glibc's malloc on transparent huge pages, for the xdist workers and their subprocesses (glibc reads it at process
# start; a glibc without the tunable ignores it). XLA:CPU's compute threads otherwise grow and shrink their malloc
# heaps on 4 KiB pages every step: the tiny train step on one core took 282-293 ms, 3.5M page faults and 14 s in the
# kernel in 150 steps, and 182 ms, 0.4M and 5 s with it (docs/BENCHMARKS.md, "Huge pages").
_TUNABLE = "glibc.malloc.hugetlb=1"
if _TUNABLE not in os.environ.get("GLIBC_TUNABLES", ""):
    os.environ["GLIBC_TUNABLES"] = ":".join(filter(None, (os.environ.get("GLIBC_TUNABLES"), _TUNABLE)))


def _pin_xdist_worker():
    """Worker i of n (pytest-xdist) and every process it starts run on the cores i::n of this machine's.

    XLA:CPU sizes its thread pools by the cores a process may run on; unpinned, each of two workers on 2 cores
    runs two compute threads, four contending for two cores: pinned, the suite took 942 s instead of 1038 s
    (docs/BENCHMARKS.md, "One core per worker"). Set here, before any test imports jax; children (the
    `python -m dream_jax.main` runs) inherit it.
    """
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 1))
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if worker.startswith("gw") and 1 < count <= len(cores):
        os.sched_setaffinity(0, cores[int(worker[2:])::count])


_pin_xdist_worker()

# The modules of half a minute or more, longest first (their module-wide wall times in one run of the suite, idle:
# test_learning.py 429 s, then 133 down to 34 s). CI runs `-n 2 --dist loadscope`: a module stays on one worker
# (its fixtures run once; pytest 9 ignores the nodeid suffix by which xdist 3.8's loadgroup would group tests, so
# loadgroup split these modules and trained twice), and a worker takes the next module when it finishes one. Longest
# first, the short modules fill in at the end and both workers finish within seconds of each other; in file order
# test_train_loop.py (122 s) came last and left one worker idle for 100 s.
_LONG_MODULES = ("test_learning.py", "test_generate.py", "test_train_loop.py", "test_multihost.py", "test_notebook.py",
                 "test_eval_run.py", "test_sharded_equivalence.py", "test_encoder_capacity.py", "test_compile.py",
                 "test_scan_layers.py", "test_export.py", "test_eval_fid_run.py", "test_main_errors.py")


def _rank(item):
    name = item.path.name
    return _LONG_MODULES.index(name) if name in _LONG_MODULES else len(_LONG_MODULES)


def pytest_configure(config):
    # xdist's loadscope hands out modules with the most tests first unless told not to, which put the 800-step
    # test_learning.py (5 tests) last: keep the order below.
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    items.sort(key=_rank)  # stable: the rest keep their file order
