# ---
# jupyter:
#   accelerator: TPU
#   colab:
#     provenance: []
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: accelerator,colab
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # DREAM in JAX: one model that classifies and draws
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dream-jax/dream_jax/blob/main/notebooks/dream_jax_demo.ipynb)
#
# This notebook trains the embedded default of `dream_jax` (a tiny DREAM on procedurally rendered captioned
# shapes: nothing is downloaded), watches its losses live, then uses the *same* weights to generate images
# from text (with and without Semantically Aligned Decoding), to classify images zero-shot, and to load the
# checkpoint in PyTorch. Pick **Runtime > Change runtime type > TPU** (v5e-1 or v2-8); a GPU or a CPU runtime
# works too, only slower.
#
# **How long.** With the defaults below (the embedded default's 1920 steps at batch 32), 6-9 minutes of
# training on an idle 2-core CPU, measured (`python benchmarks/train_tiny.py`, docs/BENCHMARKS.md); on a TPU
# runtime the chip mostly waits for the host. The TPU part is an *estimate, not a measurement* (no TPU was
# available when it was written): the ahead-of-time compile of an earlier, 64-token version of this
# train step for TPU topologies (`python -m dream_jax.main --config=configs/dream_tiny.py --mode=compile
# --config.compile_topology=v5e:2x2`, and `v2:2x2`; libtpu cannot build a lone `v5e:1x1`) counts 60 GFLOP per
# step of 64 images, 0.3 ms at a v5e chip's 197 TFLOP/s peak and still only ~6 ms at 5% of it. So the chip
# waits for the host, which renders the shapes: the input pipeline gives 51 batches/s on a loaded 2-core CPU,
# about 20 ms a step, so 1920 steps take about a minute. Add about 2 minutes of `pip install`, 1-2
# minutes of XLA compiles (the train step compiled for `v5e:2x2` in 76 s on that 2-core CPU; the Colab host
# is faster) and a minute for sampling, evaluation and export. The generator follows the prompt only after
# ~800 optimiser steps, so fewer TRAIN_STEPS give good zero-shot accuracy but blotchy samples.

# %% [markdown]
# ## Parameters
# Everything that sets the size of the run is in this one cell (the CI test replaces it with a tiny run).

# %% tags=["parameters"]
TRAIN_STEPS = 1920  # optimiser steps; the paper's 48-epoch masking warmup is compressed into them
BATCH_SIZE = 32  # global batch: a multiple of the 4 mask groups and of the number of devices
DEPTH = 3  # transformer blocks of the encoder and of the decoder each (the embedded default's 3)
LOG_EVERY = 50  # steps between logged points (the live plot's resolution)
SAMPLING_ITERS = 8  # MAR decoding steps per image (16 tokens)
DIFFUSION_STEPS = 50  # respaced DDPM steps of the diffusion head at every decoding step
NUM_CANDIDATES = 5  # SAD: candidates decoded per image until SAD_STEP
SAD_STEP = 4  # SAD: the decoding step T_c after which only the best candidate continues
SAMPLES_PER_PROMPT = 4  # images per prompt in each grid
ZERO_SHOT_IMAGES = 512  # held-out images for zero-shot accuracy
WORKDIR = "workdir/notebook"  # checkpoints, metrics.jsonl, TensorBoard events, samples, the PyTorch export

# %% [markdown]
# ## Install
# On Colab this clones the repository at a pinned tag (its `configs/` are not part of the package) and installs
# it with every dependency pinned by the package (`requirements.txt`), plus the TPU runtime (`libtpu`) or the
# CUDA build of the same `jax` version. Anywhere else (a local Jupyter, the CI test) it does nothing: install the
# clone with `pip install -e .`.

# %%
import importlib.metadata
import os
import subprocess
import sys

REPO_URL = "https://github.com/dream-jax/dream_jax"
REPO_REF = "v0.1.0"  # the release tag of setup.py's version (a test keeps them equal)
JAX_VERSION = "0.10.2"  # requirements.txt's pin; the CUDA build must be the same version
CHECKOUT = "/content/dream_jax"  # Colab's clone


def on_colab():
    """Colab is where the install must happen; a local kernel already has the package and must not be touched."""
    try:
        import google.colab  # noqa: F401
    except ImportError:
        return False
    return True


def installed_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def accelerator(environ, exists):
    """'tpu', 'gpu' or 'cpu', read from the runtime before jax is imported (each needs a different jax build)."""
    tpu_files = ("/dev/accel0", "/dev/vfio/0")
    if environ.get("COLAB_TPU_ADDR") or environ.get("TPU_ACCELERATOR_TYPE") or any(map(exists, tpu_files)):
        return "tpu"
    return "gpu" if exists("/dev/nvidia0") else "cpu"


def install_commands(repo_url, ref, kind, checkout):
    """The clone and pip commands for `kind`. torch is left alone: Colab's own copy serves the PyTorch export
    section."""
    extras = "[tpu]" if kind == "tpu" else ""
    commands = [["git", "clone", "-q", "--depth", "1", "--branch", ref, repo_url, checkout],
                [sys.executable, "-m", "pip", "install", "-q", "-e", f"{checkout}{extras}"]]
    if kind == "gpu":
        commands.append([sys.executable, "-m", "pip", "install", "-q", f"jax[cuda12]=={JAX_VERSION}"])
    return commands


if not on_colab():
    print(f"not on Colab: using the dream_jax {installed_version('dream_jax')} installed in this environment")
elif installed_version("dream_jax"):
    print(f"dream_jax {installed_version('dream_jax')} is already installed")
else:
    for command in install_commands(REPO_URL, REPO_REF, accelerator(os.environ, os.path.exists), CHECKOUT):
        print("$", " ".join(command))
        subprocess.run(command, check=True)
    stale = [name for name in ("numpy", "jax", "flax")
             if name in sys.modules and sys.modules[name].__version__ != installed_version(name)]
    if stale:  # pip replaced modules this kernel had already imported; their old copies stay loaded until restart
        raise RuntimeError(f"{stale} changed version: Runtime > Restart session, then run all cells again (the "
                           "install is then skipped)")

# %% [markdown]
# ## Devices and the mesh
# `dream_jax` shards every array over a `(data, fsdp, tensor)` mesh. The tiny config asks for `(-1, 1, 1)`:
# pure data parallelism over whatever devices exist (8 TPU cores on a v2-8, 1 chip on a v5e-1, 1 GPU, 1 CPU).
# The same code and config run on a multi-host pod; only `mesh.shape` changes.

# %%
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import dream_jax


def checkout_root():
    """The clone dream_jax is installed from (editable): it holds configs/, which the package does not ship."""
    root = pathlib.Path(dream_jax.__file__).resolve().parents[1]
    if not (root / "configs" / "dream_tiny.py").is_file():
        raise FileNotFoundError(f"{root} has no configs/dream_tiny.py: install dream_jax from a clone "
                                "(pip install -e CLONE) and restart the kernel")
    return root


sys.path.insert(0, str(checkout_root()))
from configs import dream_tiny  # noqa: E402
from dream_jax import sharding  # noqa: E402
from dream_jax.training import train  # noqa: E402


def notebook_config():
    """The embedded default, resized by the parameter cell; the 48-epoch warmups are compressed into the run."""
    c = dream_tiny.get_config()
    c.batch_size = BATCH_SIZE
    c.model.encoder_depth = c.model.decoder_depth = DEPTH
    c.total_steps = TRAIN_STEPS
    c.steps_per_epoch = max(1, round(TRAIN_STEPS / c.num_epochs))
    c.log_every = LOG_EVERY
    c.checkpoint_every = TRAIN_STEPS
    c.sampling.update(dict(num_iter=SAMPLING_ITERS, sad_step=SAD_STEP, num_candidates=NUM_CANDIDATES))
    c.diffusion.sampling_steps = DIFFUSION_STEPS
    c.final_samples, c.final_evals = 0, ()  # this notebook samples and evaluates below, step by step
    return c


config = notebook_config()
train.validate_config(config)
mesh = sharding.make_mesh(config)
train.check_batch(config, mesh)
devices = jax.devices()
print(f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform}), {jax.process_count()} process(es)")
print(f"mesh {dict(mesh.shape)}: {config.batch_size // sharding.batch_divisor(mesh, config)} images per device")

# %% [markdown]
# ## What DREAM is
# DREAM (2025, *Where Visual Understanding Meets Text-to-Image Generation*) trains **one ViT** for two jobs at
# once. An image becomes a sequence of continuous tokens (here 8x8 pixel patches on a fixed PCA: 16 tokens; at
# scale, SD-VAE latents); a random fraction of them is **masked**. The **encoder** sees only the visible tokens (plus a few
# buffer tokens): its mean-pooled output is trained **contrastively** against a CLIP text tower, as in CLIP.
# A **decoder** fills in the masked positions while cross-attending to frozen T5 features of the caption, and a
# small **diffusion MLP head** learns to sample each masked token (MAR). **Masking Warmup** draws the masking
# ratio from a truncated normal whose mean moves from 0 (good for recognition) to 1 (generation) over
# training. At sampling time, **SAD** decodes several candidates part way, lets the encoder score each against
# the prompt, and finishes only the best one.

# %%
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from dream_jax import runtime
from dream_jax import tokens as tokens_lib
from dream_jax.data import synthetic
from dream_jax.generation import sampler
from dream_jax.training import masking

BOXES = {  # name: (x, y, text); the block diagram of one training step
    "image": (0.08, 0.5, "image\n-> 16 tokens"),
    "mask": (0.27, 0.5, "mask a ratio r\n(Masking Warmup)"),
    "encoder": (0.46, 0.5, "ViT encoder\nvisible + buffer"),
    "pool": (0.66, 0.82, "mean-pool\n+ projection"),
    "clip": (0.87, 0.82, "InfoNCE vs\nCLIP text tower"),
    "decoder": (0.66, 0.18, "decoder + mask tokens,\nx-attn to T5(caption)"),
    "diff": (0.87, 0.18, "diffusion head:\ndenoise masked tokens"),
}
HALF_WIDTH = 0.075
ARROWS = [("image", "mask"), ("mask", "encoder"), ("encoder", "pool"), ("pool", "clip"), ("encoder", "decoder"),
          ("decoder", "diff")]


def draw_diagram(ax):
    for x, y, text in BOXES.values():
        ax.add_patch(FancyBboxPatch((x - HALF_WIDTH, y - 0.11), 2 * HALF_WIDTH, 0.22, boxstyle="round,pad=0.01",
                                    fc="#e8eef8", ec="#34495e"))
        ax.text(x, y, text, ha="center", va="center", fontsize=8)
    for a, b in ARROWS:
        (xa, ya, _), (xb, yb, _) = BOXES[a], BOXES[b]
        ax.add_patch(FancyArrowPatch((xa + HALF_WIDTH, ya), (xb - HALF_WIDTH, yb), arrowstyle="-|>",
                                     mutation_scale=12))
    ax.set_xlim(-0.01, 0.96)
    ax.set_ylim(0, 1)
    ax.axis("off")


def masked_views(config, frozen, image, ratios, rng):
    """The image with ceil(64 r) random tokens blanked for each r: what the encoder sees (uint8 [R, H, W, 3])."""
    tokens = tokens_lib.images_to_tokens(config, frozen, image[None], rng)
    ratios = jnp.asarray(ratios, jnp.float32)
    mask = masking.random_masks(rng, ratios, len(ratios), tokens.shape[1])
    views = jnp.where(mask[..., None], 0.0, tokens[0])  # 0 = mid grey: visible against the dark background
    return np.asarray(tokens_lib.tokens_to_images(config, frozen, views))


rt = runtime.create(config, mesh)  # the tokenizers and the frozen components (here the PCA patch projection)
frozen = rt.frozen
example = synthetic.CaptionedShapes("train", num_examples=8, image_size=config.tokenizer.image_size)[3]
view_ratios = (0.0, 0.25, 0.5, 0.75, 0.95)
views = masked_views(config, frozen, example["image"], view_ratios, jax.random.key(0))

fig = plt.figure(figsize=(12, 5))
draw_diagram(fig.add_axes((0, 0.38, 1, 0.62)))
for i, (r, view) in enumerate(zip(view_ratios, views)):
    ax = fig.add_axes((0.1 + i * 0.165, 0.0, 0.14, 0.33))
    ax.imshow(view, interpolation="nearest")
    ax.set_title(f"mask ratio {r:.2f}", fontsize=9)
    ax.axis("off")
fig.suptitle(f"one training example: \u201c{example['caption']}\u201d (grey patches: masked tokens)", y=1.0)
plt.show()

# %% [markdown]
# ## Train, with a live loss plot
# `train.train_and_evaluate(config, WORKDIR)` is the whole trainer (the same call as `python -m
# dream_jax.main --mode=train`): it writes `metrics.jsonl`, TensorBoard events and checkpoints into `WORKDIR`,
# and rerunning this cell resumes from the newest checkpoint. The plot is redrawn from `metrics.jsonl` by a
# background thread while the trainer runs here. Expect the first point after the compile (a minute or so).

# %% tags=["loss-plot"]
import contextlib
import io
import json
import threading
import time

from IPython.display import Image, display

from dream_jax import summary

METRICS = os.path.join(WORKDIR, "metrics.jsonl")


def read_metrics(path):
    """The trainer's JSONL log as {name: array over logged steps}; lines not yet complete are skipped."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        records = [json.loads(line) for line in f if line.endswith("\n")]
    return {k: np.array([r[k] for r in records]) for k in records[0]} if records else {}


def loss_figure_png(metrics, total_steps):
    """PNG bytes of the losses so far (Figure API, not pyplot: it is drawn from a background thread)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.6))
    left, right = fig.subplots(1, 2)
    if metrics:
        left.plot(metrics["step"], metrics["gen_loss"], label="diffusion loss (masked tokens)")
        left.plot(metrics["step"], metrics["clip_loss"], label="contrastive loss (InfoNCE)")
        right.plot(metrics["step"], metrics["clip_acc"], color="C2", label="in-batch image->text accuracy")
        right.plot(metrics["step"], metrics["mask_ratio_mean"], color="C3", label="mean masking ratio")
        fig.suptitle(f"step {int(metrics['step'][-1])}/{total_steps}, {metrics['steps_per_sec'][-1]:.1f} steps/s, "
                     f"ETA {summary.format_seconds(metrics['eta_sec'][-1])}")
        left.legend(fontsize=8)
        right.legend(fontsize=8)
    left.set_yscale("log")
    for ax in (left, right):
        ax.set_xlim(0, total_steps)
        ax.set_xlabel("step")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    return buffer.getvalue()


class LivePlot:
    """Redraws the loss plot every `period` seconds from a thread; `stop()` draws the final state."""

    def __init__(self, path, total_steps, period=3.0):
        self.path, self.total, self.period = path, total_steps, period
        self.handle = display(Image(loss_figure_png(read_metrics(path), total_steps)), display_id=True)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _draw(self):
        self.handle.update(Image(loss_figure_png(read_metrics(self.path), self.total)))

    def _loop(self):
        while not self._done.wait(self.period):
            self._draw()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self._draw()


progress = io.StringIO()  # the trainer's progress lines: the plot's title shows the same numbers
start = time.monotonic()
with LivePlot(METRICS, TRAIN_STEPS), contextlib.redirect_stdout(progress):
    state = train.train_and_evaluate(config, WORKDIR)
lines = progress.getvalue().splitlines()
print(lines[-1] if lines else f"nothing to do: {WORKDIR} is already at step {int(state.step)}")
print(f"trained to step {int(state.step)} in {time.monotonic() - start:.0f} s (compile included)")


# %% [markdown]
# ## Masking Warmup over training
# Every step draws one masking ratio per mask group (4 here) from TruncNormal(mu, 0.45, [0, 1]); mu rises
# linearly from 0 to 1 over the first 36 of 48 epochs. Below are the very ratios the trainer used: the same
# function (`train.mask_ratios`: `masking.sample_mask_ratios` with the step's random key, sorted so that the
# encoder's capacity plan fits each class of groups), checked against the mean masking ratio the trainer logged.

# %% tags=["masking-plot"]
def trained_ratios(config, num_steps):
    """float [S, G]: the masking ratio of every group at every step, as the train loop draws them."""
    return np.asarray(jax.vmap(lambda s: train.mask_ratios(config, s))(jnp.arange(num_steps)))


def window_means(ratios, logged_steps):
    """Mean ratio over each logging window (steps after the previous logged step up to this one)."""
    bounds = np.concatenate([[0], logged_steps]).astype(int)
    return np.array([ratios[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:])])


ratios = trained_ratios(config, TRAIN_STEPS)
metrics = read_metrics(METRICS)
logged = window_means(ratios, metrics["step"])
print(f"max |recomputed - logged| mean masking ratio: {np.max(np.abs(logged - metrics['mask_ratio_mean'])):.1e}")

steps = np.arange(TRAIN_STEPS)
epochs = steps / config.steps_per_epoch
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw=dict(width_ratios=(3, 2)))
bins = (np.linspace(0, TRAIN_STEPS, min(60, TRAIN_STEPS) + 1), np.linspace(0, 1, 26))
left.hist2d(np.repeat(steps, ratios.shape[1]), ratios.ravel(), bins=bins, cmap="Blues")
left.plot(steps, np.asarray(masking.warmup_mean(epochs, config.masking)), color="C1", label="mu: TruncNormal location")
left.plot(metrics["step"], metrics["mask_ratio_mean"], "o", ms=3, color="C3", label="logged batch mean")
left.set(xlabel="step", ylabel="masking ratio", title="ratio density over training")
left.legend(fontsize=8)
window = max(1, TRAIN_STEPS // 10)
for frac in (0.0, 0.33, 0.67, 1.0):
    first = round(frac * (TRAIN_STEPS - window))
    right.hist(ratios[first:first + window].ravel(), bins=np.linspace(0, 1, 21), histtype="step", density=True,
               label=f"steps {first}-{first + window - 1}")
right.set(xlabel="masking ratio", title="distribution in four windows of training")
right.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## Text-to-image, without and with SAD
# `sampler.sample_images` runs `generate.generate` (one `jax.jit`: random-order MAR decoding, classifier-free
# guidance, the diffusion head) from the EMA weights of the newest checkpoint. *Plain* decodes one image per
# sample; *SAD* decodes `NUM_CANDIDATES` candidates until step `SAD_STEP`, scores each with DREAM's own
# encoder against the prompt, and finishes the best. Titles: the chosen candidate's SAD score at T_c, and
# (both rows) DREAM's cosine between the finished image and its prompt.

# %% tags=["samples"]
from dream_jax import imaging
from dream_jax.evaluation import interface, zero_shot
from dream_jax.generation import generate

variables, ckpt_step = runtime.restore_variables(rt, WORKDIR, use_ema=True)
ctx = interface.make_context(rt, WORKDIR, variables, ckpt_step, use_ema=True)
prompts = sampler.DEFAULT_PROMPTS["shapes"]


def final_scores(images, prompts):
    """DREAM's cosine of each finished image [P, N, H, W, 3] with its own prompt: [P, N]."""
    flat = jnp.asarray(images.reshape((-1,) + images.shape[2:]))
    image_emb = ctx.predict.image_embedding(flat, jax.random.key(0))
    text_emb = zero_shot.class_embeddings(ctx.predict, [[p] for p in prompts])
    cosine = np.asarray(image_emb @ text_emb.T).reshape(images.shape[:2] + (len(prompts),))
    return np.stack([cosine[i, :, i] for i in range(len(prompts))])


def show_grid(images, titles, prompts, heading):
    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols + 2.4, 2.0 * rows), squeeze=False)
    for i in range(rows):
        for j in range(cols):
            axes[i, j].imshow(images[i, j], interpolation="nearest")
            axes[i, j].set_title(titles[i][j], fontsize=8)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[i, 0].set_ylabel(prompts[i], rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(heading)
    plt.show()


settings = {
    "plain": generate.options_from_config(config, num_candidates=1, sad_step=0),
    "SAD": generate.options_from_config(config),
}
mean_final = {}
for name, opts in settings.items():
    opts.validate(config.model.seq_len)
    images, scores, chosen = sampler.sample_images(rt, variables, prompts, SAMPLES_PER_PROMPT, 0, opts,
                                                   log=lambda _: None)
    final = final_scores(images, prompts)
    mean_final[name] = final.mean()
    imaging.save_png(imaging.grid(images, upscale=4), os.path.join(WORKDIR, "samples", f"notebook_{name}.png"))
    if opts.num_candidates > 1:
        best = np.take_along_axis(scores, chosen[..., None], axis=-1)[..., 0]
        titles = [[f"SAD {b:.2f} / {f:.2f}" for b, f in zip(br, fr)] for br, fr in zip(best, final)]
        done = generate.decoded_fraction(config.model.seq_len, opts.num_iter, opts.sad_step)
        heading = (f"SAD: best of {opts.num_candidates} after {opts.sad_step}/{opts.num_iter} steps "
                   f"({done:.0%} of tokens decoded), step {ckpt_step}\n(chosen candidate's score at T_c / "
                   "finished image vs prompt)")
    else:
        titles = [[f"{f:.2f}" for f in fr] for fr in final]
        heading = f"plain decoding, {opts.num_iter} steps, step {ckpt_step}\n(finished image vs prompt)"
    show_grid(images, titles, prompts, heading)
print("mean prompt-image cosine of the finished images: "
      + ", ".join(f"{name} {value:.3f}" for name, value in mean_final.items()))

# %% [markdown]
# ## Zero-shot classification
# The other half of the same model: 28 shape x colour class prompts go through the CLIP text tower, held-out
# images (unseen attribute combinations and caption templates) through the encoder with nothing masked; the
# nearest class prompt is the prediction.

# %% tags=["zero-shot"]
result = zero_shot.shapes_task(ctx, num_images=ZERO_SHOT_IMAGES, batch_size=min(128, ZERO_SHOT_IMAGES))
print(f"zero-shot top-1 accuracy: {result['top1']:.3f}")
print(f"top-5 {result['top5']:.3f}; chance {result['chance']:.3f} (28 classes, "
      f"{ZERO_SHOT_IMAGES} held-out images, EMA weights of step {ckpt_step})")

# %% [markdown]
# ## The checkpoint, and the same weights in PyTorch
# The trainer saved an orbax checkpoint (train state, EMA and the data iterator position) at its last step.
# `to_pytorch.export_to_workdir` (the same as `--mode=export`, see `docs/EXPORT.md`) writes it in the DREAM
# authors' `state_dict` layout; `load_pytorch_model` builds the standalone PyTorch DREAM from it. The check: both
# frameworks embed the same images and class prompts, and classify them the same way.

# %%
import importlib.util

from dream_jax import checkpoint


def directory_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


manager = checkpoint.Manager(WORKDIR, config, read_only=True)
print(f"orbax checkpoint steps {manager.steps()} in {manager.directory} "
      f"({directory_bytes(manager.directory) / 2**20:.1f} MiB)")
manager.close()


def torch_embeddings(model, config, frozen, images, prompt_ids):
    """Normalised image [N, E] and class [K, E] embeddings from the PyTorch DREAM (nothing masked)."""
    import torch

    tokens = torch.from_numpy(np.array(tokens_lib.images_to_tokens(config, frozen, images, jax.random.key(0))))
    with torch.no_grad():
        image = model.image_embedding(tokens, torch.zeros(tokens.shape[:2], dtype=torch.bool))
        text = model.encode_text(torch.from_numpy(np.asarray(prompt_ids)).long())
    normalise = lambda x: torch.nn.functional.normalize(x, dim=-1).numpy()  # noqa: E731
    return normalise(image), normalise(text)


if importlib.util.find_spec("torch") is None:
    print("torch is not installed here: skipping the PyTorch export (pip install -e '.[export]')")
else:
    from dream_jax.interop import to_pytorch

    pth, tensors = to_pytorch.export_to_workdir(config, WORKDIR, mesh=mesh)
    torch_model = to_pytorch.load_pytorch_model(pth)
    source = synthetic.CaptionedShapes("heldout", num_examples=64, seed=1000, image_size=config.tokenizer.image_size)
    items = [source[i] for i in range(len(source))]
    images = jnp.asarray(np.stack([it["image"] for it in items]))
    classes = synthetic.shape_color_classes()
    labels = [classes.index((int(it["shape"]), int(it["color"]))) for it in items]
    prompt_ids = rt.tokenizers.clip_ids([synthetic.shape_color_prompt(s, c) for s, c in classes])
    torch_image, torch_text = torch_embeddings(torch_model, config, frozen, images, prompt_ids)
    jax_image = np.asarray(ctx.predict.image_embedding(images, jax.random.key(0)))
    jax_text = zero_shot.class_embeddings(ctx.predict, [[synthetic.shape_color_prompt(s, c)] for s, c in classes])
    print(f"max |JAX - PyTorch| of normalised embeddings: images {np.max(np.abs(jax_image - torch_image)):.1e}, "
          f"class prompts {np.max(np.abs(jax_text - torch_text)):.1e}")
    print(f"zero-shot top-1 on {len(items)} held-out images: PyTorch "
          f"{zero_shot.accuracy(torch_image, torch_text, labels):.3f}, JAX "
          f"{zero_shot.accuracy(jax_image, jax_text, labels):.3f}")

# %% [markdown]
# ## Where to go next
# - **Longer runs and the command line.** Everything above is `python -m dream_jax.main
#   --config=configs/dream_tiny.py --workdir=DIR` with `--mode=train|sample|eval|export`; any config value can
#   be overridden (`--config.total_steps=20000`). `docs/EVALUATION.md` covers zero-shot, linear probe,
#   few-shot, FID/IS and alignment.
# - **Real data.** `docs/DATA.md`: CC12M webdataset shards, the frozen SD-VAE and T5-Large from local files,
#   and a one-off VAE latent cache (`--mode=cache`).
# - **The paper's scales.** `configs/dream_{b,l,h,g}.py` (330M to 2.4B trainable parameters); `--mode=info`
#   prints parameters and FLOPs, and `--mode=compile --config.compile_topology=v5p:4x4x4` checks a TPU slice's
#   memory plan without a TPU (`docs/SCALING.md`).
# - **TPU pods.** `launch/` holds gcloud TPU VM scripts (`docs/LAUNCH.md`); the mesh, sharding and
#   checkpoints used here carry over unchanged.
# - **PyTorch.** `docs/EXPORT.md`: export to the authors' layout, or import their checkpoints.
