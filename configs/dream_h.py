"""DREAM-H: the authors' recipe at the H scale (see configs/common.py for every value)."""

from configs import common


def get_config():
    return common.get_base_config("H")
