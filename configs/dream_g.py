"""DREAM-G: the authors' recipe at the G scale (see configs/common.py for every value)."""

from configs import common


def get_config():
    return common.get_base_config("G")
