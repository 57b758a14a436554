"""Shared defaults of every dream_jax config and the one scale table (B/L/H/G as the authors' code).

Every number is ../shared/PAPER.md's (the authors' train_dream.sh / main.py); a config file picks a scale and
overrides what it must. Evaluator settings come from dream_jax.evaluation.registry (each kind's DEFAULTS).
"""

import ast

import ml_collections

from dream_jax.evaluation import finetune, registry

# name: (width D, encoder depth, decoder depth, heads, MLP hidden)  -- PAPER.md §1.2
SCALES = {
    "B": (768, 12, 12, 12, 3072),
    "L": (1024, 16, 16, 16, 4096),
    "H": (1280, 20, 20, 16, 5120),
    "G": (1664, 24, 24, 16, 8192),
}

# Parallelism per scale for the paper's global batch of 2048 on a TPU pod slice (docs/SCALING.md, made by
# benchmarks/compile_table.py): FSDP over `fsdp` devices (params, grads and AdamW/EMA state split F ways, batch over
# all devices) and data parallel over the rest (-1). F divides every `embed`-named width of its scale (G's 1664 =
# 13 x 128). The slice must have a multiple of F chips; on fewer devices pass e.g. --config.mesh.shape='(-1,1,1)'.
# Where activations do not fit a slice's chips, raise grad_accum_steps (exact, see train.accumulated_grads) or set a
# remat policy (model.remat; docs/SCALING.md records where libtpu's compiler crashed on it). Tensor
# parallelism (`tensor`) only pays once the per-chip batch would drop below 1.
PARALLELISM = {
    "B": dict(mesh=(-1, 8, 1), remat="none"),
    "L": dict(mesh=(-1, 16, 1), remat="none"),
    "H": dict(mesh=(-1, 16, 1), remat="none"),
    "G": dict(mesh=(-1, 32, 1), remat="none"),
}

# One logical-axis-rules table for every mesh: the mesh shape alone picks DP, FSDP or TP.
# Weights shard their `embed` axis over fsdp and heads / MLP hidden over tensor; the batch over data x fsdp.
AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("classes", None),
    ("length", None),
    ("kv", None),
    ("embed_out", None),
    ("mlp_out", None),
    ("cond", None),
    ("token", None),
    ("freq", None),
    ("proj", None),
    ("norm", None),
    ("layers", None),  # the stacked-blocks axis of scan_layers
)


def apply_override(config, assignment):
    """Sets `config.a.b = value` from the string "a.b=value" (a Python literal, else the plain string): the
    benchmarks' `--set` flag."""
    name, value = assignment.split("=", 1)
    *parents, leaf = name.split(".")
    node = config
    for p in parents:
        node = node[p]
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass  # a plain string
    node[leaf] = value


def scale_config(scale):
    """The `model` section's shape fields for a scale name."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {sorted(SCALES)}")
    width, enc, dec, heads, mlp = SCALES[scale]
    return dict(width=width, encoder_depth=enc, decoder_depth=dec, num_heads=heads, mlp_dim=mlp)


def get_base_config(scale="B"):
    """The paper's DREAM recipe at `scale` on CC12M-style data (256 px, SD-VAE, T5-Large)."""
    c = ml_collections.ConfigDict()
    c.seed = 1

    c.model = ml_collections.ConfigDict(dict(
        scale=scale,
        **scale_config(scale),
        seq_len=256,            # (256 / 8 / 2)^2 tokens
        token_dim=16,           # 4 latent channels x 2 x 2
        buffer_size=64,
        num_classes=1000,       # class_emb rows; only row 0 is used (authors' layout)
        attn_dropout=0.1,
        proj_dropout=0.1,
        # Stochastic depth of the encoder's last block (linear from 0 over depth, as MAE): 0 in pre-training; the
        # finetune evaluator sets its own (evaluation/finetune.py).
        drop_path=0.0,
        aligner_depth=6,
        cond_dim=1024,          # T5-Large
        cond_len=128,
        embed_dim=256,
        proj_hidden_dim=1024,
        diffloss_depth=3,
        diffloss_width=1024,
        # Compute dtype; master weights, softmax and losses stay float32 (models/precision.py).
        precision="bfloat16",
        # What each transformer block keeps for the backward pass: "none" (all), "full" (recompute the block),
        # "save_dots" (keep its x @ W products); models/transformer.REMAT_POLICIES.
        remat=PARALLELISM[scale]["remat"],
        # nn.scan over the blocks of each tower: parameters stacked on a leading `layers` axis in the train state,
        # one block compiled per tower (export, import and info see the authors' per-block layout either way).
        # Off in the presets: G on a v5p-128 compiles in 22 s instead of ~7 min, but its loop's saved activations
        # need 105 GiB a chip (XLA cannot rematerialise them) and remat in the decoder crashes libtpu 0.0.42
        # (docs/SCALING.md, "Scanned blocks").
        scan_layers=False,
        # jax.nn.dot_product_attention's implementation: "xla" (any device) or "cudnn" (NVIDIA, bf16/fp16: the
        # fused kernel). Training with attn_dropout > 0 runs attention explicitly (no fused kernel drops weights).
        attention="xla",
        # The encoder runs on visible tokens: each step's batch is cut into up to encoder_classes classes of
        # similar mask ratios, each at a capacity rounded up to a multiple of seq_len / encoder_buckets (one compiled
        # step per plan; docs/SCALING.md). encoder_classes=1, encoder_buckets=1: the key-masked encoder only.
        encoder_classes=2,
        encoder_buckets=4,
        text_tower=dict(vocab_size=49408, context_length=77, width=512, depth=12, num_heads=8),
    ))

    # Local files only (docs/DATA.md says what to download, from where): a diffusers sd-vae-ft-ema directory, a
    # transformers t5-large directory (with spiece.model) and OpenCLIP's bpe_simple_vocab_16e6.txt.gz.
    c.tokenizer = ml_collections.ConfigDict(dict(
        kind="vae",             # "vae" (SD KL-f8) or "pixels" (patchify RGB; the tiny config)
        image_size=256,
        patch_size=2,
        vae_path="",
        latent_scale=0.18215,
        # pixels only: > 0 projects each patch onto its top pca_dim whitened principal components, fitted on
        # pca_examples rendered training images of seed pca_seed (dream_jax/models/patch_pca.py); 0 = raw patches.
        pca_dim=0,
        pca_examples=2048,
        pca_seed=0,
    ))
    c.text = ml_collections.ConfigDict(dict(
        clip_tokenizer="clip_bpe",
        clip_vocab_path="",
        cond_encoder="t5",
        t5_path="",
    ))

    # clip_denoised: MAR samples latents unclipped; the tiny config's pixels lie in [-1, 1] and may clip.
    c.diffusion = ml_collections.ConfigDict(dict(num_steps=1000, sampling_steps=100, batch_mul=4,
                                                 clip_denoised=False))

    c.masking = ml_collections.ConfigDict(dict(
        kind="warmup",          # warmup | mar | fixed | uniform
        mu_start=0.0,
        mu_end=1.0,
        std=0.45,
        min_ratio=0.0,
        max_ratio=1.0,
        warmup_start_epoch=0.0,
        warmup_end_epoch=36.0,
        fixed_ratio=0.75,
        num_groups=32,          # one ratio per group, as one per GPU in the authors' 32-GPU runs
    ))

    c.loss = ml_collections.ConfigDict(dict(
        gen_weight=1.0,
        clip_weight=0.005,
        min_visible_for_clip=0.25,
        min_masked_for_gen=0.5,
        text_drop_prob=0.1,
    ))

    c.batch_size = 2048
    c.num_epochs = 48
    c.steps_per_epoch = 12_000_000 // 2048
    c.total_steps = -1          # -1: num_epochs * steps_per_epoch

    c.optim = ml_collections.ConfigDict(dict(
        base_lr=1e-4,           # lr = base_lr * batch_size / 256
        b1=0.9,
        b2=0.95,
        weight_decay=0.04,
        grad_clip=3.0,
        warmup_epochs=12.0,
        schedule="constant",    # constant | cosine (after warmup)
        ema_rate=0.9999,
        # AdamW's moments as two flat vectors, replicated (state.flat_adamw: a smaller program, the same update up to
        # float rounding); off, each moment is sharded as its param, as a sharded model needs.
        flat_update=False,
    ))

    # Generation (PAPER.md §3): 64 random-order steps, CFG 3 on a linear ramp, SAD with K=5 candidates chosen
    # after T_c=32 steps as the authors' README (T_c=21 decodes ~12.5% of the tokens before the choice).
    c.sampling = ml_collections.ConfigDict(dict(
        num_iter=64,
        cfg=3.0,
        cfg_schedule="linear",
        temperature=1.0,
        num_candidates=5,
        sad_step=32,
        batch_size=64,
        use_ema=True,
        encoder_buckets=4,  # the encoder runs on the decoded tokens, capacity rounded up to L / 4 (1 = all L)
    ))

    # num_devices: 0 = every device; N = the first N (the mesh shape's -1 then fills those).
    c.mesh = ml_collections.ConfigDict(dict(shape=PARALLELISM[scale]["mesh"], axes=("data", "fsdp", "tensor"),
                                            num_devices=0))
    c.axis_rules = AXIS_RULES
    # Microbatches per step: the global batch is split into this many slices (each of whole mask groups), their
    # gradients summed inside the jitted step; the update is the full batch's (contrastive negatives and BatchNorm
    # statistics stay global; train.accumulated_grads). Divides masking.num_groups.
    c.grad_accum_steps = 1
    # --mode=compile: a TPU topology name libtpu knows (e.g. v5p:4x4x4, v5e:16x16, v4:2x4x4); docs/SCALING.md.
    c.compile_topology = ""

    # source: shapes | webdataset | latents. path: for webdataset a glob of img2dataset tar shards (e.g.
    # '/data/cc12m/*.tar'); for latents the directory `--mode=cache` wrote.
    # index_dir: where the shard indexes are written ('' = beside the shards).
    c.data = ml_collections.ConfigDict(dict(source="webdataset", path="", index_dir="", num_workers=8,
                                            shuffle_seed=0))

    c.log_every = 50
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    # 'a,b': a jax.profiler trace of train steps a..b in WORKDIR/tensorboard/plugins/profile (TensorBoard / XProf).
    c.profile_steps = ""

    # --mode=eval and, every eval_every steps (0 = never), during training; docs/EVALUATION.md. FID and alignment
    # need files the user provides: enable them with e.g. --config.evals.fid.enabled=True
    # --config.evals.fid.inception_weights=PATH --config.evals.fid.prompts=PROMPTS.txt --config.evals.fid.reference=DIR
    c.eval_every = 0
    # After the last step (dream_jax/evaluation/report.py): final_samples samples of each default prompt as a PNG
    # grid in WORKDIR/samples (0 = none), the config.evals entries named in final_evals (enabled or not), and a
    # printed summary of their results.
    c.final_samples = 0
    c.final_evals = ()
    c.evals = ml_collections.ConfigDict(dict(
        zero_shot=registry.settings("zero_shot", dataset="cifar100", split="test"),
        linear_probe=registry.settings("linear_probe", dataset="imagenet2012", train_split="train",
                                   test_split="validation"),
        few_shot=registry.settings("few_shot", dataset="imagenet2012", split="validation"),
        fid=registry.settings("fid", enabled=False),
        alignment=registry.settings("alignment", enabled=False),
        clip_score=registry.settings("clip_score", enabled=False),
        segmentation=registry.settings("segmentation", dataset="scene_parse150", train_split="train",
                                       test_split="test"),
        depth=registry.settings("depth", dataset="nyu_depth_v2", train_split="train", test_split="validation"),
        # MAE's fine-tune recipe for this scale (hours on ImageNet: enable it explicitly).
        finetune=registry.settings("finetune", enabled=False, dataset="imagenet2012", train_split="train",
                                   test_split="validation", **finetune.MAE_RECIPES[scale]),
    ))
    return c
