"""OpenAI / OpenCLIP CLIP weights from the user's local file -> Flax params of models/clip.py's CLIP.

Nothing downloads. Files read, all in the OpenAI state_dict layout (`visual.conv1.weight`,
`visual.transformer.resblocks.{i}.attn.in_proj_weight`, `token_embedding.weight`, `text_projection`, ...):
  - OpenCLIP's `.safetensors` (e.g. open_clip_model.safetensors of `ViT-L-14` / `openai`): read without torch;
  - OpenCLIP's `.bin` / `.pt` state dicts (torch.load with weights_only=True; a training checkpoint's
    `state_dict` entry and its DistributedDataParallel `module.` prefix are accepted);
  - OpenAI's TorchScript `.pt` (e.g. ViT-L-14.pt from the CLIP repository), which weights_only refuses: read with
    torch.jit.load on the CPU.
Half-precision tensors are read as float32. `logit_scale` and the TorchScript file's `input_resolution`,
`context_length` and `vocab_size` entries are not needed for embeddings and are skipped. Every other tensor must
match the named architecture's expected shape (the table below, from the ClipConfig), and every parameter must be
present; anything else is one ValueError naming the keys.

Layouts: linear weights [out, in] become [in, out] kernels (the fused attention's [3W, W] -> [W, 3, H, K], its
output [W, W] -> [H, K, W], transformer.py's layout); the patch conv [W, 3, P, P] becomes patchify's [3 P P, W];
`proj`, `text_projection` and the embeddings are stored as used (x @ proj), so they are taken as they are.

Dimension letters: W width, H heads, K head dim, M MLP width (4 W), P patch size, E embedding dim, N patches.
"""

import pickle
import warnings

import numpy as np
from safetensors.flax import load_file

from dream_jax.data import paths
from dream_jax.models import clip as clip_lib

SKIPPED = ("logit_scale", "input_resolution", "context_length", "vocab_size")
HINT = ("a local OpenAI CLIP TorchScript .pt (e.g. ViT-L-14.pt), or an OpenCLIP state dict (.safetensors, .bin or "
        ".pt) of the model named by the `model` setting")
_MAX_LISTED = 5


# ------------------------------------------------------------------------------------------------------ the table
def _same(x, shape):
    return x.reshape(shape)


def _kernel(x, shape):
    """A torch Linear weight [out, in] -> kernel [in, out], then split into the Flax kernel's axes."""
    return x.T.reshape(shape)


def _patch(x, shape):
    """The patch conv [W, 3, P, P] -> [3 P P, W], channel-major as patchify orders a patch."""
    return x.reshape(x.shape[0], -1).T.reshape(shape)


def _block_table(prefix, path, width, layers):
    """{checkpoint key: (Flax path, checkpoint shape, to_flax)} of one tower's residual blocks."""
    out = {}
    for i in range(layers):
        key, at = f"{prefix}transformer.resblocks.{i}.", (*path, f"transformer_resblocks_{i}")
        for ln, norm in (("ln_1", "norm1"), ("ln_2", "norm2")):
            out[f"{key}{ln}.weight"] = ((*at, norm, "scale"), (width,), _same)
            out[f"{key}{ln}.bias"] = ((*at, norm, "bias"), (width,), _same)
        out[f"{key}attn.in_proj_weight"] = ((*at, "attn", "qkv", "kernel"), (3 * width, width), _kernel)
        out[f"{key}attn.in_proj_bias"] = ((*at, "attn", "qkv", "bias"), (3 * width,), _same)
        out[f"{key}attn.out_proj.weight"] = ((*at, "attn", "proj", "kernel"), (width, width), _kernel)
        out[f"{key}attn.out_proj.bias"] = ((*at, "attn", "proj", "bias"), (width,), _same)
        out[f"{key}mlp.c_fc.weight"] = ((*at, "mlp", "fc1", "kernel"), (4 * width, width), _kernel)
        out[f"{key}mlp.c_fc.bias"] = ((*at, "mlp", "fc1", "bias"), (4 * width,), _same)
        out[f"{key}mlp.c_proj.weight"] = ((*at, "mlp", "fc2", "kernel"), (width, 4 * width), _kernel)
        out[f"{key}mlp.c_proj.bias"] = ((*at, "mlp", "fc2", "bias"), (width,), _same)
    return out


def key_table(c):
    """{checkpoint key: (Flax path, checkpoint shape, to_flax(x, flax_shape))} of ClipConfig `c`'s parameters."""
    vw, tw, n = c.vision_width, c.text_width, (c.image_size // c.patch_size) ** 2
    table = {
        "visual.conv1.weight": (("visual", "conv1", "kernel"), (vw, 3, c.patch_size, c.patch_size), _patch),
        "visual.class_embedding": (("visual", "class_embedding"), (vw,), _same),
        "visual.positional_embedding": (("visual", "positional_embedding"), (n + 1, vw), _same),
        "visual.proj": (("visual", "proj"), (vw, c.embed_dim), _same),
        "token_embedding.weight": (("text", "token_embedding"), (c.vocab_size, tw), _same),
        "positional_embedding": (("text", "positional_embedding"), (c.context_length, tw), _same),
        "text_projection": (("text", "text_projection"), (tw, c.embed_dim), _same),
    }
    for key, path, width in (("visual.ln_pre", ("visual", "ln_pre"), vw), ("visual.ln_post", ("visual", "ln_post"), vw),
                             ("ln_final", ("text", "ln_final"), tw)):
        table[f"{key}.weight"] = ((*path, "scale"), (width,), _same)
        table[f"{key}.bias"] = ((*path, "bias"), (width,), _same)
    table.update(_block_table("visual.", ("visual",), vw, c.vision_layers))
    table.update(_block_table("", ("text",), tw, c.text_layers))
    return table


# ------------------------------------------------------------------------------------------------------- files
def _torch_state_dict(path):
    import torch  # only for .pt / .bin files; safetensors need no torch

    try:
        with warnings.catch_warnings():  # torch.load warns before it refuses a TorchScript archive
            warnings.filterwarnings("ignore", message=".*TorchScript archive")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError):
        # OpenAI's released files are TorchScript archives, which weights_only loading refuses.
        state = torch.jit.load(path, map_location="cpu").state_dict()
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # an OpenCLIP training checkpoint
        state = state["state_dict"]
    return {k.removeprefix("module."): v.detach().float().cpu().numpy() for k, v in state.items()
            if hasattr(v, "detach")}


def read_state_dict(path, what="config.evals.clip_score.weights"):
    """{checkpoint key: float32 array} of a .safetensors, .bin or .pt file; FileNotFoundError naming `what`."""
    paths.check_file(path, what, HINT)
    if path.endswith(".safetensors"):
        return {k: np.asarray(v, np.float32) for k, v in load_file(path).items()}  # flax reads bfloat16 too
    return _torch_state_dict(path)


def _listing(items):
    more = f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"{sorted(items)[:_MAX_LISTED]}{more}"


def params_from_state_dict(state, c, what="the CLIP weights"):
    """OpenAI-layout tensors -> Flax params of CLIP(c); one ValueError naming missing, unexpected and misshapen
    keys."""
    table = key_table(c)
    missing = [k for k in table if k not in state]
    unexpected = [k for k in state if k not in table and k not in SKIPPED]
    wrong = [f"{k} {tuple(np.shape(state[k]))} (expected {table[k][1]})" for k in table
             if k in state and tuple(np.shape(state[k])) != table[k][1]]
    if missing or unexpected or wrong:
        problems = [f"{name} {_listing(keys)}" for name, keys in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shapes", wrong)) if keys]
        raise ValueError(f"{what} does not match the architecture: {'; '.join(problems)}; expected {HINT}")
    shapes = clip_lib.param_shapes(c)
    params = {}
    for key, (path, _, to_flax) in table.items():
        node, shape = params, shapes
        for name in path[:-1]:
            node, shape = node.setdefault(name, {}), shape[name]
        node[path[-1]] = np.ascontiguousarray(to_flax(np.asarray(state[key], np.float32), shape[path[-1]].shape))
    return params


def load(path, model="ViT-L-14", activation="quick_gelu", what="config.evals.clip_score.weights"):
    """(ClipConfig, params) of the architecture named `model` from a local weights file."""
    c = clip_lib.config(model, activation)
    return c, params_from_state_dict(read_state_dict(path, what), c, f"{what}={path!r} (model {model!r})")
