"""Entry point: `python -m dream_jax.main --config=configs/dream_tiny.py --workdir=DIR [--mode=...]`.

Flags and modes only; each mode is one library call. Errors a user can cause (bad flag, config value, missing
file) end the program with one line on stderr and exit code 2, not a traceback.
"""

import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

MODES = ("train", "sample", "info")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do.")
_PROMPTS = flags.DEFINE_string("prompts", None, "sample: a text file with one prompt per line.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 4, "sample: images per prompt.")
_SEED = flags.DEFINE_integer("seed", 0, "sample: random seed.")


class UserError(Exception):
    """An error with a one-line message for the user."""


def _run(config, mode, workdir):
    if mode == "info":
        from dream_jax import info

        print(info.report(config))
        return
    if not workdir:
        raise UserError(f"--workdir is required for --mode={mode}")
    if mode == "train":
        from dream_jax import train

        train.train_and_evaluate(config, workdir)
    elif mode == "sample":
        from dream_jax import sample

        sample.sample_to_workdir(config, workdir, _PROMPTS.value, _NUM_SAMPLES.value, _SEED.value)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax is chatty at INFO; progress is printed
    config = _CONFIG.value
    try:
        _run(config, _MODE.value, _WORKDIR.value)
    except (UserError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    flags.mark_flag_as_required("config")
    try:
        app.run(main)
    except flags.Error as e:  # e.g. an unknown --config.x override raised while parsing
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run()
