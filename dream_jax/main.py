"""Entry point: `python -m dream_jax.main --config=configs/dream_tiny.py --workdir=DIR [--mode=...]`.

Flags and modes only; each mode is one library call. Errors a user can cause (bad flag, config value, missing
file) end the program with one line on stderr and exit code 2, not a traceback.
"""

import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from dream_jax import huge_pages

MODES = ("train", "sample", "eval", "info", "compile", "cache", "export", "import")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do.")
_PROMPTS = flags.DEFINE_string("prompts", None, "sample: a text file with one prompt per line.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 4, "sample: images per prompt.")
_SEED = flags.DEFINE_integer("seed", 0, "sample: random seed.")
_EXPORT_PATH = flags.DEFINE_string("export_path", None, "export: the .pth to write (default "
                                   "WORKDIR/export/dream_step{S}.pth); the EMA .safetensors goes beside it.")
_IMPORT_PATH = flags.DEFINE_string("import_path", None, "import: an authors'-layout .pth or .safetensors; "
                                   "written into the new WORKDIR as step 0.")
_MOMENTS_DTYPE = flags.DEFINE_enum("moments_dtype", "float16", ["float16", "float32"],
                                   "cache: storage dtype of the VAE moments.")
_CACHE_BATCH = flags.DEFINE_integer("cache_batch_size", 64, "cache: images per VAE call (rounded up to a multiple "
                                    "of the local devices).")
_DISTRIBUTED = flags.DEFINE_boolean(
    "distributed", None, "Call jax.distributed.initialize() (multi-process / multi-host runs). Default: yes when "
    "JAX_COORDINATOR_ADDRESS is set or the TPU / SLURM / Open MPI environment names several workers.")


def _several_workers():
    env = os.environ
    return ("JAX_COORDINATOR_ADDRESS" in env or "," in env.get("TPU_WORKER_HOSTNAMES", "")
            or int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1)


def _maybe_initialize_distributed():
    """jax.distributed from the environment; on CPU hosts the collectives go through gloo."""
    enabled = _several_workers() if _DISTRIBUTED.value is None else _DISTRIBUTED.value
    if enabled:
        import jax

        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        env = os.environ
        if "JAX_COORDINATOR_ADDRESS" in env:  # explicit cluster (e.g. CPU hosts); TPU/SLURM/MPI auto-detect
            jax.distributed.initialize(env["JAX_COORDINATOR_ADDRESS"], int(env["JAX_NUM_PROCESSES"]),
                                       int(env["JAX_PROCESS_ID"]))
        else:
            jax.distributed.initialize()


class UserError(Exception):
    """An error with a one-line message for the user."""


def _run(config, mode, workdir):
    if mode == "info":
        from dream_jax import info

        print(info.report(config))
        return
    if mode == "compile":  # AOT for config.compile_topology (needs the `tpu` extra: libtpu); no weights allocated
        from dream_jax import compile as compile_lib

        print(compile_lib.compile_report(config))
        return
    if not workdir:
        raise UserError(f"--workdir is required for --mode={mode}")
    if "://" not in workdir and os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir={workdir} is a file, not a directory")
    if mode == "train":
        from dream_jax.training import train

        try:
            train.train_and_evaluate(config, workdir)
        except train.NonFiniteError as e:  # not a usage error: exit 1, but one line, not a traceback
            _fail(e, code=1)
        except train.Interrupted as e:  # Ctrl-C, checkpointed: the shell's exit code for it
            _fail(e, code=130)
    elif mode == "sample":
        from dream_jax.generation import sample

        sample.sample_to_workdir(config, workdir, _PROMPTS.value, _NUM_SAMPLES.value, _SEED.value)
    elif mode == "eval":
        from dream_jax.evaluation import run as eval_run

        eval_run.evaluate_workdir(config, workdir)
    elif mode in ("export", "import"):
        if mode == "import" and not _IMPORT_PATH.value:
            raise UserError("--import_path=FILE is required for --mode=import")
        try:
            from dream_jax.interop import to_pytorch
        except ImportError as e:
            raise UserError(f"--mode={mode} needs torch and safetensors: pip install -e '.[export]' ({e})") from e
        if mode == "export":
            to_pytorch.export_to_workdir(config, workdir, _EXPORT_PATH.value)
        else:
            to_pytorch.import_to_workdir(config, workdir, _IMPORT_PATH.value)
    elif mode == "cache":  # --workdir is the cache's output directory
        import json

        from dream_jax import cache

        print(json.dumps(cache.write_cache(config, workdir, _CACHE_BATCH.value, _MOMENTS_DTYPE.value)))


def _fail(message, code=2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _one_line(error):
    """The message of `error` on one line; for a config file that raised, its first and last lines."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        lines = [lines[0], lines[-1]]
    return " ".join(lines) or type(error).__name__


def _flag_error(error, argv):
    if isinstance(error, (AttributeError, KeyError)):  # config_flags: an override names a field the config lacks
        field = str(error).strip("\"' ")
        names = [a.split("=")[0] for a in argv if a.startswith("--config.") and field in a.split("=")[0].split(".")]
        return f"{names[0] if names else field}: the config has no field {field!r}"
    return _one_line(error)


def _parse_flags(argv):
    """absl parsing, with every flag or config error as one line and exit code 2 instead of a traceback."""
    try:
        rest = flags.FLAGS(argv)
        _CONFIG.value.get("seed")  # config_flags defers a file's load error to the first use; surface it here
    except Exception as e:  # noqa: BLE001 - flags.Error, and the AttributeError / OSError of config_flags
        _fail(_flag_error(e, argv))
    if len(rest) > 1:
        _fail(f"unexpected arguments: {' '.join(rest[1:])}")
    return rest


def main(argv):
    del argv  # checked by _parse_flags
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax is chatty at INFO; progress is printed
    _maybe_initialize_distributed()
    try:
        _run(_CONFIG.value, _MODE.value, _WORKDIR.value)
    except (UserError, ValueError, FileNotFoundError) as e:
        _fail(_one_line(e))


def run():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    flags.mark_flag_as_required("config")
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    huge_pages.restart_with_huge_pages()  # before jax starts: glibc reads its tunables at process start
    run()
