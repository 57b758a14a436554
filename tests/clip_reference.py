"""Test helpers for the external CLIP: a random transformers CLIPModel, its tensors in OpenAI's state_dict layout
(written here from transformers' names, independently of dream_jax/interop/clip_weights.py), and a small BPE
vocabulary with the vocab.json / merges.txt that transformers' CLIPTokenizer reads.

Dimension letters: W width, E embedding dim.
"""

import gzip
import json

import numpy as np

# transformers' name (after the tower prefix) -> OpenAI's, for one residual block.
_BLOCK = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc",
          "mlp.fc2": "mlp.c_proj"}
_TOP = {
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "logit_scale": "logit_scale",
}


def hf_config(transformers, vision, text, embed_dim, activation="quick_gelu", eos_token_id=49407):
    """A CLIPConfig from (width, layers, heads, image_size, patch) and (width, layers, heads) tuples; the text tower
    pools at the first `eos_token_id` (OpenAI's eot, 49407, unless a test's small vocabulary has another)."""
    vw, vl, vh, image, patch = vision
    tw, tl, th = text
    return transformers.CLIPConfig(
        vision_config=dict(hidden_size=vw, intermediate_size=4 * vw, num_hidden_layers=vl, num_attention_heads=vh,
                           image_size=image, patch_size=patch, hidden_act=activation, projection_dim=embed_dim),
        text_config=dict(hidden_size=tw, intermediate_size=4 * tw, num_hidden_layers=tl, num_attention_heads=th,
                         max_position_embeddings=77, vocab_size=49408, hidden_act=activation,
                         projection_dim=embed_dim, eos_token_id=eos_token_id),
        projection_dim=embed_dim)


def openai_state_dict(hf_state, torch):
    """transformers CLIPModel tensors -> OpenAI's CLIP state_dict (torch tensors; works on the meta device)."""
    out, qkv = {}, {}
    for key, value in hf_state.items():
        if key.endswith("position_ids"):
            continue
        if key in _TOP:
            out[_TOP[key]] = value
        elif key in ("visual_projection.weight", "text_projection.weight"):
            out["visual.proj" if key.startswith("visual") else "text_projection"] = value.T  # x @ proj, [W, E]
        else:
            tower, _, _, i, rest = key.split(".", 4)  # {tower}.encoder.layers.{i}.{rest}
            prefix = f"{'visual.' if tower == 'vision_model' else ''}transformer.resblocks.{i}."
            module, leaf = rest.rsplit(".", 1)
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((prefix, leaf), {})[module[-6]] = value
            else:
                out[f"{prefix}{_BLOCK[module]}.{leaf}"] = value
    for (prefix, leaf), parts in qkv.items():
        out[f"{prefix}attn.in_proj_{leaf}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def random_clip(transformers, torch, config, seed=0):
    """A transformers CLIPModel with every parameter (LayerNorms included) randomly perturbed, in eval mode."""
    torch.manual_seed(seed)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


# ------------------------------------------------------------------------------------------------ tokenizer files
def byte_symbols():
    """CLIP's byte -> printable character map (GPT-2's), as in OpenAI's simple_tokenizer.py."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars)))


def left_to_right_merges(words):
    """Merges that build each word from its first byte rightwards (the last symbol carrying `</w>`): valid BPE
    merges (both parts are earlier symbols), shared between words with a common prefix."""
    symbols = byte_symbols()
    merges = []
    for word in words:
        chars = [symbols[b] for b in word.encode("utf-8")]
        chars[-1] += "</w>"
        left = chars[0]
        for right in chars[1:]:
            if (left, right) not in merges:
                merges.append((left, right))
            left += right
    return merges


def write_bpe(path, merges):
    """A bpe_simple_vocab_16e6.txt.gz-style file: a header line, then one merge per line."""
    path.write_bytes(gzip.compress(("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n").encode()))
    return path


def write_hf_tokenizer_files(folder, merges):
    """vocab.json and merges.txt of the same vocabulary in OpenAI's order (bytes, bytes + `</w>`, merges,
    specials) under transformers' special-token names."""
    symbols = list(byte_symbols().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return len(vocab)


def tiny_images(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
