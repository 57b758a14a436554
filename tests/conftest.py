"""Test setup: 8 fake CPU devices for sharding tests, set before jax is imported; the longest modules first."""
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

# Modules that train a model in a module-scoped fixture (minutes each), longest first. CI runs
# `-n 2 --dist loadscope`: a module stays on one worker (its fixture runs once; pytest 9 ignores the nodeid suffix
# by which xdist 3.8's loadgroup would group tests, so loadgroup split these modules and trained twice), and
# started at once they overlap the many short modules instead of trailing them.
_LONG_MODULES = ("test_learning.py", "test_eval_run.py", "test_notebook.py")


def _rank(item):
    name = item.path.name
    return _LONG_MODULES.index(name) if name in _LONG_MODULES else len(_LONG_MODULES)


def pytest_configure(config):
    # xdist's loadscope hands out modules with the most tests first unless told not to, which put the 800-step
    # test_learning.py (5 tests) last: keep the order below.
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    items.sort(key=_rank)  # stable: the rest keep their file order
