"""DREAM-H: the authors' recipe at the H scale (see dream_jax/base_config.py for every value)."""

from dream_jax import base_config


def get_config():
    return base_config.get_base_config("H")
