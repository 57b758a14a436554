"""Test setup: 8 fake CPU devices for sharding tests, set before jax is imported; the longest tests first."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# xdist groups that train a model (minutes each), longest first: started at once on their own workers, they
# overlap the many short tests instead of trailing them (CI runs `-n 2 --dist loadgroup` on 2 cores).
_LONG_GROUPS = ("trained_tiny", "eval_run")


def _rank(item):
    marker = item.get_closest_marker("xdist_group")
    group = marker.args[0] if marker and marker.args else None
    return _LONG_GROUPS.index(group) if group in _LONG_GROUPS else len(_LONG_GROUPS)


def pytest_collection_modifyitems(items):
    items.sort(key=_rank)  # stable: the rest keep their file order
