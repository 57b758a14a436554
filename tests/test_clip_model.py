"""The external CLIP of the CLIP Score evaluator equals transformers' CLIPModel, and its tokenizer transformers'
CLIPTokenizer.

Weights: a random transformers CLIPModel (tiny; every parameter perturbed) is written in OpenAI's state_dict layout
by tests/clip_reference.py's own mapping, saved as .safetensors, .bin and TorchScript .pt, and read through
dream_jax/interop/clip_weights.py; image and text embeddings must agree to 1e-4. At ViT-L/14 the shapes are
compared without allocating anything (torch's meta device, jax.eval_shape).

Dimension letters: B batch, R input resolution, T text context, E embedding dim.
"""

import random

import jax
import numpy as np
import pytest

import clip_reference as ref
from dream_jax.data.clip_tokenizer import ClipTokenizer, clean
from dream_jax.interop import clip_weights
from dream_jax.models import clip

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
TINY = clip.ARCHITECTURES["tiny"]


def _tiny_hf(activation, seed=0):
    c = TINY
    config = ref.hf_config(transformers, (c.vision_width, c.vision_layers, c.vision_heads, c.image_size,
                                          c.patch_size), (c.text_width, c.text_layers, c.text_heads), c.embed_dim,
                           activation)
    return ref.random_clip(transformers, torch, config, seed)


def _save_safetensors(model, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in ref.openai_state_dict(model.state_dict(), torch).items()}, str(path))
    return str(path)


def _ids(batch, seed=0):
    """[B, 77] ids as the tokenizer lays them out: sot, random tokens, eot (49407, the largest id), zeros."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((batch, 77), np.int64)
    for row, length in enumerate(rng.integers(0, 76, batch)):
        ids[row, : length + 2] = [49406, *rng.integers(0, 49406, length), 49407]
    return ids


@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
def test_embeddings_match_transformers(activation, tmp_path):
    model = _tiny_hf(activation)
    config, params = clip_weights.load(_save_safetensors(model, tmp_path / "tiny.safetensors"), "tiny", activation)
    pixels = np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype(np.float32)
    ids = _ids(5)
    with torch.no_grad():
        want_image = model.get_image_features(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2)))
        want_text = model.get_text_features(input_ids=torch.from_numpy(ids))
    net = clip.CLIP(config)
    image = net.apply({"params": params}, pixels, method=clip.CLIP.encode_image)
    text = net.apply({"params": params}, ids.astype(np.int32), method=clip.CLIP.encode_text)
    assert image.shape == (4, 16) and text.shape == (5, 16)
    np.testing.assert_allclose(image, want_image.pooler_output.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(text, want_text.pooler_output.numpy(), atol=1e-4, rtol=0)
    assert np.abs(want_image.pooler_output.numpy()).mean() > 0.05, "the embeddings are not trivially small"


class _Holder(torch.nn.Module):
    def forward(self, x):
        return x


def _torchscript(state, path):
    """A TorchScript archive whose state_dict is `state`, as OpenAI's released .pt files are."""
    root = _Holder()
    for key, value in state.items():
        *modules, leaf = key.split(".")
        node = root
        for name in modules:
            if name not in node._modules:
                node.add_module(name, _Holder())
            node = node._modules[name]
        node.register_parameter(leaf, torch.nn.Parameter(value, requires_grad=False))
    torch.jit.save(torch.jit.trace(root, torch.zeros(1)), str(path))
    return str(path)


def test_reads_openclip_and_openai_files(tmp_path):
    model = _tiny_hf("quick_gelu", seed=2)
    _, want = clip_weights.load(_save_safetensors(model, tmp_path / "w.safetensors"), "tiny")
    state = ref.openai_state_dict(model.state_dict(), torch)
    torch.save({k: v.contiguous() for k, v in state.items()}, tmp_path / "open_clip_pytorch_model.bin")
    # An OpenCLIP training checkpoint: wrapped, DDP-prefixed, with other entries.
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v.contiguous() for k, v in state.items()}},
               tmp_path / "epoch_3.pt")
    # OpenAI's files: TorchScript, half precision, with the resolution / context / vocab entries.
    half = {k: v.detach().half() for k, v in state.items()}
    half |= {k: torch.tensor(v) for k, v in (("input_resolution", 32), ("context_length", 77), ("vocab_size", 49408))}
    files = {"open_clip_pytorch_model.bin": 0, "epoch_3.pt": 0, "openai.pt": 1e-3}
    _torchscript(half, tmp_path / "openai.pt")
    for name, tol in files.items():
        _, got = clip_weights.load(str(tmp_path / name), "tiny")
        assert jax.tree.structure(got) == jax.tree.structure(want)
        jax.tree.map(lambda a, b, t=tol: np.testing.assert_allclose(a, b, atol=t, rtol=t), got, want)


def test_vit_l14_shapes_match_transformers():
    """The ViT-L-14 table's shapes are transformers' CLIPModel's (mapped) and the Flax model's (after import)."""
    c = clip.config("ViT-L-14")
    config = ref.hf_config(transformers, (1024, 24, 16, 224, 14), (768, 12, 12), 768)
    with torch.device("meta"):
        hf = transformers.CLIPModel(config)
    mapped = {k: tuple(v.shape) for k, v in ref.openai_state_dict(hf.state_dict(), torch).items()}
    table = clip_weights.key_table(c)
    assert mapped.keys() - table.keys() == {"logit_scale"} and table.keys() <= mapped.keys()
    assert {k: mapped[k] for k in table} == {k: shape for k, (_, shape, _) in table.items()}
    flax = clip.param_shapes(c)
    leaves = {tuple(p.key for p in path): leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(flax)}
    converted = {path: jax.eval_shape(lambda x, f=to_flax, s=leaves[path]: f(x, s),
                                      jax.ShapeDtypeStruct(shape, np.float32)).shape
                 for path, shape, to_flax in table.values()}
    assert converted == leaves
    assert sum(np.prod(s) for s in leaves.values()) == sum(np.prod(s) for s in mapped.values()) - 1  # logit_scale


def test_weight_errors_name_the_problem(tmp_path):
    path = _save_safetensors(_tiny_hf("quick_gelu"), tmp_path / "tiny.safetensors")
    with pytest.raises(ValueError, match=r"model 'ViT-B-32'\) does not match the architecture: missing .*wrong "
                                         r"shapes .*'positional_embedding \(77, 32\) \(expected \(77, 512\)\)'"):
        clip_weights.load(path, "ViT-B-32", what="config.evals.clip_score.weights")
    state = clip_weights.read_state_dict(path)
    state["visual.extra"] = state.pop("visual.proj")
    with pytest.raises(ValueError, match=r"missing \['visual.proj'\]; unexpected \['visual.extra'\]"):
        clip_weights.params_from_state_dict(state, TINY)
    with pytest.raises(FileNotFoundError, match=r"^config.evals.x.weights='/no/w.pt' does not exist; provide"):
        clip_weights.load("/no/w.pt", "tiny", what="config.evals.x.weights")
    with pytest.raises(ValueError, match="unknown CLIP model 'ViT-X'"):
        clip.config("ViT-X")


def test_preprocess_matches_pil():
    """CLIP's transform: PIL bicubic resize of the shorter side, centre crop, mean / std."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for h, w, size in ((32, 32, 224), (40, 30, 24), (64, 64, 32)):
        images = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        got = np.asarray(clip.preprocess(images, size))
        short, long = min(h, w), max(h, w)
        new = (size, int(size * long / short))
        new_wh = new[::-1] if h <= w else new
        for img, out in zip(images, got):
            resized = np.asarray(Image.fromarray(img).resize(new_wh, Image.BICUBIC), np.float32)
            top, left = int(round((resized.shape[0] - size) / 2)), int(round((resized.shape[1] - size) / 2))
            want = (resized[top:top + size, left:left + size] / 255 - clip.MEAN) / clip.STD
            levels = np.abs(out - want) * np.asarray(clip.STD) * 255
            assert levels.mean() < 0.5 and np.percentile(levels, 99) <= 2.01, (h, w, size)


# ------------------------------------------------------------------------------------------------------ tokenizer
WORDS = ("a photo of the cat dog on red blue green big small table painting sunset beach city street man woman "
         "child running with and in two three vintage poster illustration über café naïve straße 東京 北京 ελληνικά "
         "istanbul नमस्ते 한국어 zürich").split()
PUNCTUATION = [".", ",", "!", "?", "...", "!!", "-", "(", ")", "'s", "'t", "'re", "'ll", "'d", "'m", "'ve", "$", "%",
               "#", "@", "/", ":", ";", "&", "😀", "🐱", "—"]


def _strings(n, seed):
    """Mixed-case captions with punctuation, numbers and non-Latin scripts; every 8th long (past 77 tokens)."""
    rng = random.Random(seed)
    out = ["", " ", "a", "A", "!", "1", "UPPER lower MiXeD", "x" * 200, " ".join(["word"] * 120), "3.14159",
           "it's they're I'll we've he'd I'm can't DOG'S", "e-mail: a.b@c.io (1/2) 50% $19.99", "tab\tsep\nline"]
    while len(out) < n:
        length = rng.randint(60, 150) if len(out) % 8 == 0 else rng.randint(1, 18)
        parts = []
        for _ in range(length):
            r = rng.random()
            if r < 0.15:
                parts.append(str(rng.randint(0, 10**rng.randint(1, 6))))
            elif r < 0.35:
                parts.append(rng.choice(PUNCTUATION))
            else:
                word = rng.choice(WORDS)
                parts.append(rng.choice([word, word.capitalize(), word.upper()]))
        out.append("".join(p + rng.choice(["", " ", " ", "  "]) for p in parts))
    return out


# Text that OpenCLIP's cleaning (ftfy, HTML unescaping) changes and transformers' CLIPTokenizer (NFC, whitespace,
# lower case only) does not.
FTFY_CHANGES = ["don’t", "“quoted”", "cafÃ©", "&amp;", "&lt;b&gt;", "ﬁne", "Ｆｕｌｌ width", "x&amp;amp;y"]


def test_tokenizer_matches_transformers(tmp_path):
    texts = _strings(260, seed=0)
    words = [w for t in _strings(400, seed=1) for w in clean(t).split()]
    merges = ref.left_to_right_merges(sorted(set(words)))
    bpe = ref.write_bpe(tmp_path / "bpe_simple_vocab_16e6.txt.gz", merges)
    vocab_size = ref.write_hf_tokenizer_files(tmp_path, merges)
    theirs = transformers.CLIPTokenizer.from_pretrained(str(tmp_path))
    ours = ClipTokenizer(str(bpe))
    assert ours.vocab_size == vocab_size and (ours.sot_id, ours.eot_id) == (theirs.bos_token_id, theirs.eos_token_id)

    def compare(ours_texts, their_texts):
        got = ours.encode(ours_texts)
        want = theirs(their_texts, max_length=77, truncation=True, padding="max_length")
        for row, text in enumerate(ours_texts):
            n = sum(want["attention_mask"][row])
            assert list(got[row, :n]) == want["input_ids"][row][:n], text
            assert not got[row, n:].any(), text  # OpenCLIP pads with 0, transformers with eot
        return got

    ids = compare(texts, texts)
    assert (ids[:, -1] == ours.eot_id).sum() >= 20, "long captions are cut with eot last"
    assert len(set(map(tuple, ids.tolist()))) > 250 and (ids > 512).any(), "merges are used"
    # The cleaning is the one difference: ours on raw text == transformers' on OpenCLIP-cleaned text.
    compare(FTFY_CHANGES, [clean(t) for t in FTFY_CHANGES])
    assert all(list(ours.encode(t)[0]) != theirs(t, max_length=77, padding="max_length")["input_ids"][:77]
               for t in FTFY_CHANGES)
