"""`--mode=export` / `--mode=import`: dream_jax checkpoints <-> the authors' PyTorch checkpoint files.

Export writes `{'model', 'model_ema', 'epoch', 'args'}` with torch.save (tensors and plain containers only, so
`torch.load(..., weights_only=True)` opens it; `args` is the config as a plain dict) and the EMA state_dict as
`.safetensors` beside it. Every key of the authors' layout is written, including the BatchNorm buffers
(num_batches_tracked = the step) and the unused `fake_latent` / `class_emb`. Import reads such a file or the
authors' own `checkpoint-*.pth` (whose `args` is a pickled argparse.Namespace: that one class is allowed, nothing
else is unpickled) or a `.safetensors` state_dict, and refuses a missing, extra or mis-shaped key by name.

torch is imported here and in torch_modules.py only; main.py imports this module lazily.
"""

import argparse
import json
import logging
import os
import pickle
import re

import jax
import jax.numpy as jnp
import torch

from dream_jax import runtime, sharding
from dream_jax import checkpoint as checkpoint_lib
from dream_jax import state as state_lib
from dream_jax.data import pipeline
from dream_jax.data import tokenizers as tokenizers_lib
from dream_jax.interop import layout, torch_modules

SAFE_GLOBALS = (argparse.Namespace,)


# ---------------------------------------------------------------------------------------------- shapes
def table(config):
    return layout.entries_for(config.model)


# ---------------------------------------------------------------------------------------------- export
def state_dict(config, params, batch_stats, step=0):
    """Flax params + BN stats -> OrderedDict of CPU torch tensors in the authors' layout."""
    arrays = layout.to_state_dict(table(config), {"params": jax.device_get(params),
                                                  "batch_stats": jax.device_get(batch_stats)}, step)
    return type(arrays)((k, torch.from_numpy(v)) for k, v in arrays.items())


def plain_args(config):
    """The config as JSON-typed plain containers (loadable with weights_only=True)."""
    return json.loads(config.to_json_best_effort())


def export_checkpoint(config, params, ema_params, batch_stats, step, path):
    """Writes `path` (torch.save dict) and its `.safetensors` (EMA state_dict); returns both paths."""
    model = state_dict(config, params, batch_stats, step)
    ema = state_dict(config, ema_params, batch_stats, step)
    # The authors save the 0-based epoch of the last finished step; without 'optimizer' it is informational.
    epoch = max(0, (int(step) - 1) // max(1, int(config.steps_per_epoch)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"model": model, "model_ema": ema, "epoch": epoch, "args": plain_args(config)}, path)
    from safetensors.torch import save_file

    tensors_path = os.path.splitext(path)[0] + ".safetensors"
    save_file(dict(ema), tensors_path, metadata={"format": "pt", "step": str(int(step)),
                                                   "args": config.to_json_best_effort()})
    return path, tensors_path


def export_to_workdir(config, workdir, export_path=None, mesh=None):
    """`--mode=export`: the newest checkpoint of `workdir` -> `export_path` (default WORKDIR/export/...).

    `mesh` (default: the config's over all devices) is where the checkpoint is restored.
    """
    if jax.process_count() > 1:
        raise ValueError("--mode=export gathers the weights on one host; run it as a single process")
    mesh = sharding.make_mesh(config) if mesh is None else mesh
    state, step = runtime.restore_state(config, workdir, mesh)
    path = export_path or os.path.join(workdir, "export", f"dream_step{step}.pth")
    paths = export_checkpoint(config, state.params, state.ema_params, state.batch_stats, step, path)
    print(f"exported step {step} to {paths[0]} (model, model_ema) and {paths[1]} (EMA state_dict)")
    return paths


# ---------------------------------------------------------------------------------------------- import
def load_file(path):
    """A checkpoint file as a dict: `.safetensors` -> its state_dict as both 'model' and 'model_ema'; any other
    file -> torch.load with weights_only=True.

    Only tensors, plain containers and argparse.Namespace (the authors' `args`) may be unpickled.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file as load_safetensors

            state = load_safetensors(path)
            return {"model": state, "model_ema": state}
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = found.group(1) if found else str(e).strip().splitlines()[0]
        raise ValueError(f"refusing to load {path}: it pickles {what}, and only tensors, plain containers and "
                         "argparse.Namespace are allowed (weights_only=True)") from None
    except Exception as e:  # noqa: BLE001 - what a parser raises on foreign bytes varies (RuntimeError, KeyError, ...)
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"{path} is not a readable torch or safetensors checkpoint ({type(e).__name__}: "
                         f"{first})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, expected a dict (a state_dict or a checkpoint "
                         "with 'model' / 'model_ema')")
    return data


def _state_dicts(data, path):
    """(model, model_ema) state_dicts of a loaded file; a bare state_dict serves as both."""
    model, ema = data.get("model"), data.get("model_ema")
    if model is None and ema is None:
        if data and all(isinstance(v, torch.Tensor) for v in data.values()):
            return data, data
        raise ValueError(f"{path} has neither 'model' nor 'model_ema' (entries: {sorted(map(str, data))})")
    if model is None or ema is None:
        logging.warning("%s has only %s; using it for both params and EMA", path,
                        "'model'" if ema is None else "'model_ema'")
    return (model if model is not None else ema), (ema if ema is not None else model)


def _numpy(sd):
    return {k: (v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()).numpy()
            for k, v in sd.items()}


def import_checkpoint(config, path):
    """An authors'-layout file -> {'params', 'ema_params', 'batch_stats'} (numpy, float32) for this config.

    BN running stats come from 'model' (the authors' EMA dict holds copies of the live buffers).
    """
    model, ema = _state_dicts(load_file(path), path)
    abstract = state_lib.abstract_variables(config)
    t = table(config)
    live = layout.from_state_dict(t, _numpy(model), abstract, f"{path} ['model']")
    averaged = live if ema is model else layout.from_state_dict(t, _numpy(ema), abstract, f"{path} ['model_ema']")
    return {"params": live["params"], "ema_params": averaged["params"], "batch_stats": live["batch_stats"]}


def import_to_workdir(config, workdir, import_path, mesh=None):
    """`--mode=import`: writes an orbax checkpoint at step 0 in `workdir` from an authors'-layout file.

    The optimiser state is fresh; train and sample then start from it like from any checkpoint. The data
    iterator is saved at its start when the config's data source can be built (training resumes with it).
    `mesh` (default: the config's over all devices) is where the state is placed before saving.
    """
    manager = checkpoint_lib.Manager(workdir, config)
    try:
        if manager.steps():
            raise ValueError(f"{manager.directory} already has checkpoints (steps {manager.steps()}); import into "
                             "a new --workdir")
        imported = import_checkpoint(config, import_path)
        mesh = sharding.make_mesh(config) if mesh is None else mesh
        shardings = state_lib.state_shardings(config, mesh)
        put = lambda tree, sh: jax.tree.map(lambda x, s: jax.device_put(jnp.asarray(x), s), tree, sh)  # noqa: E731
        params = put(imported["params"], shardings.params)
        opt_state = jax.jit(state_lib.make_optimizer(config).init, out_shardings=shardings.opt_state)(params)
        state = state_lib.TrainState(
            step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step), params=params,
            batch_stats=put(imported["batch_stats"], shardings.batch_stats), opt_state=opt_state,
            ema_params=put(imported["ema_params"], shardings.ema_params))
        manager.save(0, state, _fresh_data_iterator(config))
    finally:
        manager.close()
    print(f"imported {import_path} into {manager.directory} as step 0")
    return state


def _fresh_data_iterator(config):
    try:
        return iter(pipeline.make_dataset(config, tokenizers_lib.make_tokenizers(config)))
    except (ValueError, FileNotFoundError) as e:
        logging.warning("no data iterator saved (%s); sampling works, training from this workdir needs one", e)
        return None


# ---------------------------------------------------------------------------------------- PyTorch side
def load_pytorch_model(path, use_ema=True):
    """The standalone torch DREAM of an exported file, weights loaded with strict=True, in eval mode."""
    data = load_file(path)
    if "args" not in data or not isinstance(data["args"], dict):
        raise ValueError(f"{path} has no dream_jax 'args' dict; build torch_modules.DREAM(...) by hand and call "
                         "load_state_dict")
    model = torch_modules.DREAM.from_args(data["args"])
    model.load_state_dict(data["model_ema" if use_ema else "model"], strict=True)
    return model.eval()

