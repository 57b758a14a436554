"""Load the frozen pretrained components (SD VAE, T5 encoder) from local directories into Flax params.

Nothing here downloads: users fetch the weights once by hand and point the config at the directory. Layouts:
  - VAE: a diffusers directory (config.json + diffusion_pytorch_model.safetensors), e.g. stabilityai/sd-vae-ft-ema.
  - T5:  a transformers directory (config.json + model.safetensors), e.g. google-t5/t5-large; only the encoder
         and the shared embedding are read, the decoder half of a full checkpoint is skipped.
Sharded checkpoints (`*.safetensors.index.json` beside the shards) load too.

The Flax modules mirror the PyTorch names, so conversion is mechanical: `a.b.0.c.weight` -> `a/b_0/c/<leaf>` with
`weight` -> `kernel` (conv OIHW -> HWIO, linear (out,in) -> (in,out)), `scale` or `embedding`. Every tensor must
map, every parameter must be filled and every shape must match; anything else is a ValueError naming the keys.

Returned params are a nested dict of float32 numpy arrays (the `params` collection), ready for
`model.apply({"params": params}, ...)` or `jax.device_put` with a sharding.
"""

import json
import os
import re
from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

from dream_jax.models import t5 as t5_lib
from dream_jax.models import vae as vae_lib

VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"
T5_WEIGHTS = "model.safetensors"
VAE_SOURCE = (
    "Download stabilityai/sd-vae-ft-ema by hand from https://huggingface.co/stabilityai/sd-vae-ft-ema "
    f"(config.json and {VAE_WEIGHTS}) into that directory; dream_jax never downloads."
)
T5_SOURCE = (
    "Download google-t5/t5-large by hand from https://huggingface.co/google-t5/t5-large "
    f"(config.json, {T5_WEIGHTS}, and spiece.model for the tokenizer) into that directory; "
    "dream_jax never downloads."
)
# Keys of a full T5ForConditionalGeneration checkpoint that the encoder does not use, skipped by design.
_T5_UNUSED_PREFIXES = ("decoder.", "lm_head.")
# Checkpoints written by older diffusers name the mid-block attention projections this way (diffusers still
# renames them on load), so both spellings load.
_LEGACY_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_MAX_LISTED = 10
# Flax names whose `_N` suffix is part of the PyTorch attribute name, not a list index (T5 v1.1's gated FF).
_NOT_LIST_INDICES = frozenset({"wi_0", "wi_1"})


# ---------------------------------------------------------------------------------------------------------------
# Public loaders.


def vae_config(path: str) -> vae_lib.VaeConfig:
    """The VaeConfig of a diffusers AutoencoderKL directory (config.json only)."""
    return vae_config_from_dict(_read_config(path, VAE_SOURCE))


def t5_config(path: str) -> t5_lib.T5Config:
    """The T5Config of a transformers T5 directory (config.json only)."""
    return t5_config_from_dict(_read_config(path, T5_SOURCE))


def load_vae(path: str) -> tuple[vae_lib.VaeConfig, dict]:
    """diffusers AutoencoderKL directory -> (VaeConfig, params)."""
    config = vae_config(path)
    tensors = _open_safetensors(path, VAE_WEIGHTS, VAE_SOURCE)
    renamed = {_rename_legacy_vae_key(k): k for k in tensors.files}
    if len(renamed) != len(tensors.files):
        clashes = sorted(k for k in tensors.files if k not in renamed.values())
        raise ValueError(f"VAE checkpoint in {path} holds both legacy and current names for {_listing(clashes)}")
    tensors = _LazyTensors({new: tensors.files[old] for new, old in renamed.items()}, renamed)
    f = config.downsample_factor
    target = _param_shapes(vae_lib.AutoencoderKL(config), jnp.zeros((1, f, f, config.in_channels)))
    return config, convert_state_dict(tensors, target, what=f"VAE checkpoint in {path}")


def load_t5(path: str) -> tuple[t5_lib.T5Config, dict]:
    """transformers T5 directory -> (T5Config, params of the encoder and shared embedding)."""
    config = t5_config(path)
    tensors = _open_safetensors(path, T5_WEIGHTS, T5_SOURCE)
    files = {k: f for k, f in tensors.files.items() if not k.startswith(_T5_UNUSED_PREFIXES)}
    names = {k: k for k in files}
    # The encoder's embed_tokens is tied to `shared`; a checkpoint may store either name or both.
    tied = "encoder.embed_tokens.weight"
    if "shared.weight" not in files and tied in files:
        files["shared.weight"], names["shared.weight"] = files[tied], tied
    files.pop(tied, None)
    names.pop(tied, None)
    target = _param_shapes(t5_lib.T5EncoderModel(config), jnp.zeros((1, 1), jnp.int32))
    params = convert_state_dict(_LazyTensors(files, names), target, what=f"T5 checkpoint in {path}")
    return config, params


def vae_config_from_dict(cfg: Mapping) -> vae_lib.VaeConfig:
    """diffusers AutoencoderKL config.json -> VaeConfig; missing keys take diffusers' defaults."""
    cls = cfg.get("_class_name", "AutoencoderKL")
    if cls != "AutoencoderKL":
        raise ValueError(f"VAE config.json: _class_name={cls!r}, expected 'AutoencoderKL'")
    if cfg.get("act_fn", "silu") != "silu":
        raise ValueError(f"VAE config.json: act_fn={cfg['act_fn']!r}, only 'silu' is supported")
    chans = tuple(int(c) for c in cfg.get("block_out_channels", (64,)))
    for field, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        types = tuple(cfg.get(field, (kind,) * len(chans)))
        if types != (kind,) * len(chans):
            raise ValueError(
                f"VAE config.json: {field}={list(types)}, expected {len(chans)} x {kind!r} "
                f"(one per block_out_channels entry)"
            )
    return vae_lib.VaeConfig(
        in_channels=int(cfg.get("in_channels", 3)),
        out_channels=int(cfg.get("out_channels", 3)),
        block_out_channels=chans,
        layers_per_block=int(cfg.get("layers_per_block", 1)),
        latent_channels=int(cfg.get("latent_channels", 4)),
        norm_num_groups=int(cfg.get("norm_num_groups", 32)),
        use_quant_conv=bool(cfg.get("use_quant_conv", True)),
        use_post_quant_conv=bool(cfg.get("use_post_quant_conv", True)),
        mid_block_add_attention=bool(cfg.get("mid_block_add_attention", True)),
        scaling_factor=float(cfg.get("scaling_factor", vae_lib.SCALE)),
    )


def t5_config_from_dict(cfg: Mapping) -> t5_lib.T5Config:
    """transformers T5 config.json -> T5Config; missing keys take transformers' defaults, as t5-large needs."""
    model_type = cfg.get("model_type", "t5")
    if model_type not in ("t5", "mt5"):
        raise ValueError(f"T5 config.json: model_type={model_type!r}, expected 't5' (or 'mt5')")
    defaults = t5_lib.T5Config()
    kwargs = {}
    for field in ("d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets",
                  "relative_attention_max_distance", "vocab_size"):
        kwargs[field] = int(cfg.get(field, getattr(defaults, field)))
    kwargs["feed_forward_proj"] = str(cfg.get("feed_forward_proj", defaults.feed_forward_proj))
    kwargs["layer_norm_epsilon"] = float(cfg.get("layer_norm_epsilon", defaults.layer_norm_epsilon))
    return t5_lib.T5Config(**kwargs)


# ---------------------------------------------------------------------------------------------------------------
# The mechanical PyTorch -> Flax conversion.


def convert_state_dict(
    tensors: Mapping[str, np.ndarray], target: Mapping, *, what: str = "checkpoint"
) -> dict:
    """PyTorch-named tensors -> Flax params shaped like `target` (a tree of shapes or ShapeDtypeStructs).

    Raises one ValueError listing every missing parameter, unused tensor and wrong shape, by checkpoint name.
    """
    wanted = {path: tuple(leaf.shape) for path, leaf in _flatten(target)}
    by_module: dict[tuple, set] = {}
    for path in wanted:
        by_module.setdefault(path[:-1], set()).add(path[-1])

    names = getattr(tensors, "names", {})
    filled, extra, bad_shape, shape_paths = {}, [], [], set()
    for key in sorted(tensors):
        path = _flax_path(key, by_module)
        if path is None:
            extra.append(names.get(key, key))
            continue
        shape = _checkpoint_shape(tensors, key)
        expected = _to_checkpoint_shape(path[-1], wanted[path])
        if shape != expected:
            bad_shape.append(f"{names.get(key, key)}: got {shape}, expected {expected}")
            shape_paths.add(path)
            continue
        filled[path] = _to_flax(path[-1], np.asarray(tensors[key], dtype=np.float32))

    missing = [_checkpoint_name(p) for p in wanted if p not in filled and p not in shape_paths]
    problems = []
    if missing:
        problems.append(f"missing tensors {_listing(missing)}")
    if extra:
        problems.append(f"unexpected (unused) tensors {_listing(extra)}")
    if bad_shape:
        problems.append(f"wrong shapes {_listing(bad_shape)}")
    if problems:
        raise ValueError(f"{what} does not match the model: " + "; ".join(problems))
    return _unflatten(filled)


def to_state_dict(params: Mapping) -> dict[str, np.ndarray]:
    """Inverse of convert_state_dict: Flax params -> PyTorch-named tensors in PyTorch layout (for export)."""
    return {_checkpoint_name(path): _to_checkpoint(path[-1], np.asarray(x)) for path, x in _flatten(params)}


def _flax_path(key: str, by_module: Mapping[tuple, set]) -> tuple | None:
    """'encoder.down_blocks.0.resnets.1.conv1.weight' -> (encoder, down_blocks_0, resnets_1, conv1, kernel)."""
    parts = key.split(".")
    module = []
    for part in parts[:-1]:
        if part.isdigit() and module:
            module[-1] = f"{module[-1]}_{part}"
        else:
            module.append(part)
    leaves = by_module.get(tuple(module), set())
    candidates = ("kernel", "scale", "embedding", "weight") if parts[-1] == "weight" else (parts[-1],)
    for leaf in candidates:
        if leaf in leaves:
            return (*module, leaf)
    return None


def _checkpoint_name(path: tuple) -> str:
    """Inverse of _flax_path for messages: (.., block_0, wi_0, kernel) -> "..block.0.wi_0.weight"."""
    module = [p if p in _NOT_LIST_INDICES else re.sub(r"_(\d+)$", r".\1", p) for p in path[:-1]]
    return ".".join(module) + (".bias" if path[-1] == "bias" else ".weight")


def _to_flax(leaf: str, x: np.ndarray) -> np.ndarray:
    if leaf == "kernel" and x.ndim == 4:
        return np.ascontiguousarray(x.transpose(2, 3, 1, 0))
    if leaf == "kernel" and x.ndim == 2:
        return np.ascontiguousarray(x.T)
    return x


def _to_checkpoint(leaf: str, x: np.ndarray) -> np.ndarray:
    if leaf == "kernel" and x.ndim == 4:
        return np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    if leaf == "kernel" and x.ndim == 2:
        return np.ascontiguousarray(x.T)
    return x


def _to_checkpoint_shape(leaf: str, shape: tuple) -> tuple:
    if leaf == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if leaf == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return shape


def _rename_legacy_vae_key(key: str) -> str:
    m = re.match(r"^(.*\.attentions\.\d+\.)(query|key|value|proj_attn)(\.(?:weight|bias))$", key)
    return key if m is None else m.group(1) + _LEGACY_VAE_ATTENTION[m.group(2)] + m.group(3)


def _listing(items: list) -> str:
    shown = ", ".join(repr(i) for i in items[:_MAX_LISTED])
    more = f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"[{shown}{more}]"


def _flatten(tree: Mapping, prefix: tuple = ()) -> Iterable[tuple[tuple, object]]:
    for k, v in tree.items():
        if isinstance(v, Mapping):
            yield from _flatten(v, (*prefix, k))
        else:
            yield (*prefix, k), v


def _unflatten(flat: Mapping[tuple, np.ndarray]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
    return out


def _param_shapes(module, *dummy) -> dict:
    return jax.eval_shape(module.init, jax.random.key(0), *dummy)["params"]


# ---------------------------------------------------------------------------------------------------------------
# Files.


class _LazyTensors(Mapping):
    """Checkpoint key -> tensor, read from disk only when asked (a t5-large file holds an unused decoder).

    `files` maps each key to a `_Reader` (callable, with `.shape`); `names` maps each key back to the name in the
    file, for messages.
    """

    def __init__(self, files: Mapping[str, "_Reader"], names: Mapping[str, str] | None = None):
        self.files = dict(files)
        self.names = dict(names or {})

    def __getitem__(self, key):
        return self.files[key]()

    def __iter__(self):
        return iter(self.files)

    def __len__(self):
        return len(self.files)

    def shape(self, key) -> tuple:
        return tuple(self.files[key].shape)


def _checkpoint_shape(tensors: Mapping, key: str) -> tuple:
    if isinstance(tensors, _LazyTensors):
        return tensors.shape(key)
    return tuple(np.shape(tensors[key]))


class _Reader:
    """Reads one tensor from one safetensors file; knows its shape and dtype without reading the data."""

    def __init__(self, filename: str, key: str, shape: tuple, dtype: str):
        self.filename, self.key, self.shape, self.dtype = filename, key, shape, dtype

    def __call__(self) -> np.ndarray:
        if self.dtype == "BF16":
            return _read_bf16(self.filename, self.key)
        with safe_open(self.filename, framework="numpy") as f:
            return f.get_tensor(self.key)


def _read_bf16(filename: str, key: str) -> np.ndarray:
    """safetensors' numpy reader lacks bfloat16: read the bytes where the file's header says (dtype via jnp)."""
    with open(filename, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        entry = json.loads(f.read(header_len))[key]
        start, end = entry["data_offsets"]
        f.seek(8 + header_len + start)
        data = f.read(end - start)
    return np.frombuffer(data, dtype=jnp.bfloat16).reshape(entry["shape"]).astype(np.float32)


def _read_config(path: str, source: str) -> dict:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"pretrained directory {path!r} does not exist. {source}")
    filename = os.path.join(path, "config.json")
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"{filename!r} not found. {source}")
    with open(filename) as f:
        return json.load(f)


def _open_safetensors(path: str, weights: str, source: str) -> _LazyTensors:
    """A single `weights` file, or the shards named by `weights + '.index.json'`."""
    single = os.path.join(path, weights)
    index = single + ".index.json"
    if os.path.isfile(single):
        shards = [single]
    elif os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        shards = sorted({os.path.join(path, s) for s in weight_map.values()})
        for shard in shards:
            if not os.path.isfile(shard):
                raise FileNotFoundError(f"shard {shard!r} named by {index!r} not found. {source}")
    else:
        raise FileNotFoundError(f"{single!r} not found (nor a sharded {index!r}). {source}")
    files = {}
    for shard in shards:
        with safe_open(shard, framework="numpy") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                info = f.get_slice(key)
                files[key] = _Reader(shard, key, tuple(info.get_shape()), info.get_dtype())
    return _LazyTensors(files)
