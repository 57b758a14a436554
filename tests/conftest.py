"""Test setup, before jax is imported: 8 fake CPU devices for sharding tests, one compilation cache, malloc on huge
pages; the longest modules first."""
import os

from dream_jax import huge_pages
from xla_flags import FAST_COMPILE

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8 " + FAST_COMPILE
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the session, for one-device processes only: the one-device subprocesses
# (train_helpers.subprocess_env) compile a program another test already compiled (the tiny train step, the sampler,
# the evaluators) once. It lives in pytest's cache directory, so a clean clone starts cold, as CI does. Processes
# of several devices (these 8, inherited by subprocesses started with this environment) leave it off: an
# executable with collectives read back from it can run two of one device's all-gathers at once, and XLA:CPU's
# thread pool then deadlocks until the 40 s rendezvous timeout aborts the process (tests/test_smoke.py: 1 of 9 to
# 4 of 5 runs from the cache aborted, none that compiled; docs/BENCHMARKS.md, "The 8-device abort").
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "d", "jax_compilation_cache_suite"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
# glibc's malloc on transparent huge pages for the xdist workers and every process they start (glibc reads it at
# process start), as `python -m dream_jax.main` sets it for itself (dream_jax/huge_pages.py): the tiny train step on
# one core took 282-293 ms without, 182 ms with it (docs/BENCHMARKS.md, "Huge pages").
os.environ.update(huge_pages.environment(os.environ, huge_pages.glibc_version()) or {})

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
