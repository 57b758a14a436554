"""The authors' PyTorch `state_dict` layout of DREAM and its mapping to our Flax variables, both ways.

Pure numpy (no torch, no jax import): one table of `Entry`s, in the authors' state_dict order, says for every
torch key which Flax collection and path holds it and how the array is laid out (../shared/OFFICIAL_LAYOUT.md):

  copy    same array (position embeddings, class_emb, token_embedding, text_projection [in, out], logit_scale)
  dense   a Dense kernel with `num_in` input axes -> nn.Linear weight [out, in]: the kernel reshaped to
          [prod(in), prod(out)] and transposed (fused qkv [D, 3, H, K] -> [3D, D], proj [H, K, D] -> [D, D],
          cross q [D, H, K] -> [D, D], kv [D, 2, H, K] -> [2D, D]); torch's row order [q|k|v], head-major,
          is exactly the C order of (3, H, K)
  flat    a bias flattened to 1-D (qkv bias [3, H, K] -> [3D])
  count   BatchNorm's num_batches_tracked, which has no Flax counterpart (int64 0-d, written as the step)

LayerNorm/BatchNorm `scale` -> `weight`; BatchNorm stats `mean`/`var` (batch_stats) -> `running_mean`/`running_var`.
Shapes work on anything with `.shape` (numpy arrays or jax.eval_shape ShapeDtypeStructs).

Scanned blocks (model.scan_layers) hold a tower's N blocks in one array per parameter with a leading `layers` axis
(`encoder/encoder_blocks/...` [N, ...] instead of `encoder/encoder_blocks_{i}/...`); their entries carry `layer`,
the index into that axis, so the torch keys, shapes and order are the same either way.

Dimension letters: D width, H heads, K head dim, M MLP hidden, N depth.
"""

import dataclasses
import math
from collections import OrderedDict

import numpy as np

PARAMS, BATCH_STATS = "params", "batch_stats"
_MAX_LISTED = 12


@dataclasses.dataclass(frozen=True)
class Entry:
    """One torch state_dict key: where its array lives in our variables and how it is laid out."""

    key: str
    collection: str | None  # "params", "batch_stats", or None for torch-only buffers
    path: tuple
    kind: str  # copy | dense | flat | count
    num_in: int = 1
    layer: int | None = None  # the block's index along a scanned tower's leading axis; None: not stacked


# ------------------------------------------------------------------------------------------- the table
def _linear(key, path, num_in=1, flat_bias=False):
    return [Entry(f"{key}.weight", PARAMS, path + ("kernel",), "dense", num_in),
            Entry(f"{key}.bias", PARAMS, path + ("bias",), "flat" if flat_bias else "copy")]


def _norm(key, path):
    return [Entry(f"{key}.weight", PARAMS, path + ("scale",), "copy"),
            Entry(f"{key}.bias", PARAMS, path + ("bias",), "copy")]


def _mlp(key, path, names=("fc1", "fc2"), flax_names=("fc1", "fc2")):
    return _linear(f"{key}.{names[0]}", path + (flax_names[0],)) + _linear(f"{key}.{names[1]}", path + (flax_names[1],))


def _self_attention(key, path):
    return _linear(f"{key}.qkv", path + ("qkv",), flat_bias=True) + _linear(f"{key}.proj", path + ("proj",), 2)


def _block(key, path):
    """timm Block: norm1, attn.{qkv,proj}, norm2, mlp.{fc1,fc2} (12 keys)."""
    return (_norm(f"{key}.norm1", path + ("norm1",)) + _self_attention(f"{key}.attn", path + ("attn",))
            + _norm(f"{key}.norm2", path + ("norm2",)) + _mlp(f"{key}.mlp", path + ("mlp",)))


def _cross_block(key, path):
    """The authors' CrossAttentionBlock (20 keys)."""
    cross = path + ("cross_attn",)
    return (_norm(f"{key}.norm0", path + ("norm0",)) + _self_attention(f"{key}.self_attn", path + ("self_attn",))
            + _norm(f"{key}.norm1", path + ("norm1",))
            + _linear(f"{key}.cross_attn.q", cross + ("q",), flat_bias=True)
            + _linear(f"{key}.cross_attn.kv", cross + ("kv",), flat_bias=True)
            + _linear(f"{key}.cross_attn.proj", cross + ("proj",), 2)
            + _norm(f"{key}.norm2", path + ("norm2",)) + _mlp(f"{key}.mlp", path + ("mlp",)))


def _clip_block(key, path):
    """OpenCLIP's ResidualAttentionBlock as registered by the authors: attn, ln_1, mlp, ln_2 (12 keys)."""
    attn = path + ("attn",)
    return ([Entry(f"{key}.attn.in_proj_weight", PARAMS, attn + ("qkv", "kernel"), "dense"),
             Entry(f"{key}.attn.in_proj_bias", PARAMS, attn + ("qkv", "bias"), "flat")]
            + _linear(f"{key}.attn.out_proj", attn + ("proj",), 2)
            + _norm(f"{key}.ln_1", path + ("norm1",))
            + _mlp(f"{key}.mlp", path + ("mlp",), ("c_fc", "c_proj"))
            + _norm(f"{key}.ln_2", path + ("norm2",)))


def _batch_norm(key, path):
    return (_norm(key, path)
            + [Entry(f"{key}.running_mean", BATCH_STATS, path + ("mean",), "copy"),
               Entry(f"{key}.running_var", BATCH_STATS, path + ("var",), "copy"),
               Entry(f"{key}.num_batches_tracked", None, (), "count")])


def _diffloss(depth):
    net = ("diffloss_net",)
    entries = (_linear("diffloss.net.time_embed.mlp.0", net + ("time_embed", "mlp_0"))
               + _linear("diffloss.net.time_embed.mlp.2", net + ("time_embed", "mlp_2"))
               + _linear("diffloss.net.cond_embed", net + ("cond_embed",))
               + _linear("diffloss.net.input_proj", net + ("input_proj",)))
    for r in range(depth):
        key, path = f"diffloss.net.res_blocks.{r}", net + (f"res_blocks_{r}",)
        entries += (_norm(f"{key}.in_ln", path + ("in_ln",))
                    + _mlp(f"{key}.mlp", path, ("0", "2"), ("mlp_0", "mlp_2"))
                    + _linear(f"{key}.adaLN_modulation.1", path + ("adaLN_modulation_1",)))
    final = net + ("final_layer",)
    return (entries + _linear("diffloss.net.final_layer.linear", final + ("linear",))
            + _linear("diffloss.net.final_layer.adaLN_modulation.1", final + ("adaLN_modulation_1",)))


def _blocks(make, key, path, name, depth, scan):
    """The entries of a tower's `depth` blocks (`make(key, path)` for one), unrolled or stacked (scan)."""
    if not scan:
        return [e for i in range(depth) for e in make(f"{key}.{i}", path + (f"{name}_{i}",))]
    return [dataclasses.replace(e, layer=i) for i in range(depth) for e in make(f"{key}.{i}", path + (name,))]


def entries(encoder_depth, decoder_depth, aligner_depth, text_depth, diffloss_depth, scan=False):
    """Every key of the authors' state_dict in their order (root Parameters first, then submodules); `scan`:
    the four transformer towers' blocks are stacked (model.scan_layers)."""
    enc, dec, ali, txt = ("encoder",), ("decoder",), ("aligner",), ("text_tower",)
    copy = lambda key, path: Entry(key, PARAMS, path, "copy")  # noqa: E731
    out = [
        copy("fake_latent", enc + ("fake_latent",)),
        copy("encoder_pos_embed_learned", enc + ("encoder_pos_embed_learned",)),
        copy("mask_token", dec + ("mask_token",)),
        copy("decoder_pos_embed_learned", dec + ("decoder_pos_embed_learned",)),
        copy("text_pos_emb", ali + ("text_pos_emb",)),
        copy("diffusion_pos_embed_learned", dec + ("diffusion_pos_embed_learned",)),
        copy("positional_embedding", txt + ("positional_embedding",)),
        # A raw Parameter used as x @ P: stored [in, out] by both sides, never transposed.
        copy("text_projection", txt + ("text_projection",)),
        copy("logit_scale", ("logit_scale",)),
        copy("class_emb.weight", enc + ("class_emb",)),
    ]
    out += _linear("z_proj", enc + ("z_proj",)) + _norm("z_proj_ln", enc + ("z_proj_ln",))
    out += _blocks(_block, "encoder_blocks", enc, "encoder_blocks", encoder_depth, scan)
    out += _norm("encoder_norm", enc + ("encoder_norm",))
    out += _linear("decoder_embed", dec + ("decoder_embed",)) + _norm("decoder_proj_ln", dec + ("decoder_proj_ln",))
    out += _blocks(_cross_block, "decoder_blocks", dec, "decoder_blocks", decoder_depth, scan)
    out += _linear("text_proj", ali + ("text_proj",)) + _norm("text_proj_ln", ali + ("text_proj_ln",))
    out += _blocks(_block, "text_aligner", ali, "text_aligner", aligner_depth, scan)
    out += _norm("decoder_norm", dec + ("decoder_norm",))
    out += _blocks(_clip_block, "transformer.resblocks", txt, "transformer_resblocks", text_depth, scan)
    out += [copy("token_embedding.weight", txt + ("token_embedding",))] + _norm("ln_final", txt + ("ln_final",))
    proj = ("image_projection",)
    out += (_linear("image_projection.layer1", proj + ("layer1",))
            + _batch_norm("image_projection.bn1", proj + ("bn1",))
            + _linear("image_projection.layer2", proj + ("layer2",))
            + _batch_norm("image_projection.bn2", proj + ("bn2",))
            + _linear("image_projection.layer3", proj + ("layer3",)))
    return out + _diffloss(diffloss_depth)


def entries_for(model_config):
    """The table for the `model` section of a dream_jax config (ConfigDict or plain dict)."""
    m = model_config
    return entries(m["encoder_depth"], m["decoder_depth"], m["aligner_depth"], m["text_tower"]["depth"],
                   m["diffloss_depth"], bool(m["scan_layers"]))


# ----------------------------------------------------------------------------------------------- shapes
def torch_shape(entry, flax_shape):
    """The torch tensor shape of an entry whose Flax array has `flax_shape`."""
    flax_shape = tuple(flax_shape)
    if entry.kind == "dense":
        return (math.prod(flax_shape[entry.num_in:]), math.prod(flax_shape[:entry.num_in]))
    if entry.kind == "flat":
        return (math.prod(flax_shape),)
    if entry.kind == "count":
        return ()
    return flax_shape


def get_path(tree, path):
    for name in path:
        tree = tree[name]
    return tree


def _leaf_shape(entry, variables):
    """The Flax shape of one entry's array (one block's slice of a stacked array)."""
    shape = tuple(get_path(variables[entry.collection], entry.path).shape)
    return shape if entry.layer is None else shape[1:]


def _leaf(entry, variables):
    value = get_path(variables[entry.collection], entry.path)
    return value if entry.layer is None else np.asarray(value)[entry.layer]


def _set_path(tree, path, value):
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _flat_paths(tree, prefix=()):
    if not hasattr(tree, "items"):
        return {prefix}
    paths = set()
    for name, sub in tree.items():
        paths |= _flat_paths(sub, prefix + (name,))
    return paths


def _listed(names):
    names = sorted(names)
    more = f" ... and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return ", ".join(names[:_MAX_LISTED]) + more


def check_covers(table, variables):
    """ValueError if the Flax variables hold a leaf that no entry maps (it would be silently dropped)."""
    for collection in (PARAMS, BATCH_STATS):
        mapped = {e.path for e in table if e.collection == collection}
        unmapped = _flat_paths(variables.get(collection, {})) - mapped
        if unmapped:
            raise ValueError(f"Flax {collection} without a PyTorch key: {_listed('/'.join(p) for p in unmapped)}")


def torch_shapes(table, variables):
    """OrderedDict key -> torch shape, from Flax variables {'params', 'batch_stats'} (arrays or shape structs)."""
    check_covers(table, variables)
    return OrderedDict((e.key, torch_shape(e, _leaf_shape(e, variables) if e.collection else ())) for e in table)


# ------------------------------------------------------------------------------------------- conversion
def to_torch_array(entry, value):
    """Flax array -> numpy array in the torch layout (C-contiguous; exact, no arithmetic)."""
    value = np.asarray(value)
    if entry.kind == "dense":
        return np.ascontiguousarray(value.reshape(torch_shape(entry, value.shape)[::-1]).T)
    if entry.kind == "flat":
        return value.reshape(-1).copy()
    return np.array(value)


def from_torch_array(entry, value, flax_shape):
    """Torch-layout numpy array -> Flax array of `flax_shape` (exact)."""
    value = np.asarray(value)
    if entry.kind == "dense":
        return np.ascontiguousarray(value.T.reshape(flax_shape))
    return np.array(value.reshape(flax_shape))


def to_state_dict(table, variables, num_batches_tracked=0):
    """Flax {'params', 'batch_stats'} -> OrderedDict key -> numpy array, every key of the authors' layout."""
    check_covers(table, variables)
    out = OrderedDict()
    for e in table:
        if e.kind == "count":
            out[e.key] = np.array(num_batches_tracked, np.int64)
        else:
            out[e.key] = to_torch_array(e, _leaf(e, variables))
    return out


def check_state_dict(table, state_dict, shapes, source="the checkpoint"):
    """ValueError naming every missing, unexpected and mis-shaped key of `state_dict` against `shapes`."""
    keys = set(state_dict)
    expected = [e.key for e in table]
    missing = [k for k in expected if k not in keys]
    extra = keys - set(expected)
    wrong = [f"{k} {tuple(np.shape(state_dict[k]))} (expected {shapes[k]})" for k in expected
             if k in keys and tuple(np.shape(state_dict[k])) != tuple(shapes[k])]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if extra:
        problems.append(f"unexpected keys: {_listed(extra)}")
    if wrong:
        problems.append(f"mis-shaped keys: {'; '.join(wrong[:_MAX_LISTED])}")
    if problems:
        raise ValueError(f"{source} does not match the DREAM layout of this config ({len(expected)} keys): "
                         + " | ".join(problems))


def from_state_dict(table, state_dict, abstract_variables, source="the checkpoint"):
    """Authors'-layout {key: array} -> Flax {'params', 'batch_stats'} shaped like `abstract_variables`.

    Floating arrays become float32 (the dtype of our params); num_batches_tracked is checked for presence only.
    A scanned tower's blocks are stacked in layer order.
    """
    shapes = torch_shapes(table, abstract_variables)
    check_state_dict(table, state_dict, shapes, source)
    out = {PARAMS: {}, BATCH_STATS: {}}
    layers = {}  # (collection, path) -> {layer: array} of stacked entries
    for e in table:
        if e.kind == "count":
            continue
        target = get_path(abstract_variables[e.collection], e.path)
        value = np.asarray(state_dict[e.key]).astype(np.dtype(target.dtype), copy=False)
        value = from_torch_array(e, value, _leaf_shape(e, abstract_variables))
        if e.layer is None:
            _set_path(out[e.collection], e.path, value)
        else:
            layers.setdefault((e.collection, e.path), {})[e.layer] = value
    for (collection, path), blocks in layers.items():
        _set_path(out[collection], path, np.stack([blocks[i] for i in range(len(blocks))]))
    return out
