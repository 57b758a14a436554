"""DREAM-B: the authors' recipe at the B scale (see configs/common.py for every value)."""

from configs import common


def get_config():
    return common.get_base_config("B")
