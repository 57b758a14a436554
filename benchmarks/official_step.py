"""The authors' PyTorch train step, timed on the same device, batch and masking as dream_jax's (throughput.py).

The model comes from a local checkout of the authors' code (`--official_repo=PATH`; it is imported from there,
never copied here): their `main.get_args_parser()` parses scripts/train_dream.sh's flags, with the scale's
`--model dream_<scale>_txt_conditional` and masking held at one ratio, and their `main.build_model(args, "dream")`
builds it, so every setting is theirs. One step is their engines/dream.py step on cached inputs: the model's
forward under bf16 autocast (`model(x, captions, labels, text_embedding_t5, est_idx=...)` -> MAR loss and CLIP
loss), `loss + 0.005 x loss_clip` backward, AdamW (their betas and weight decay), plus a forward of a random-init
transformers T5 encoder of the config's T5 shape, because dream_jax's step runs the frozen T5 on the ids while
the authors' cache stores its features. Random inputs of the config's shapes; no input pipeline in the timing.

Dimension letters: B batch, c latent channels, h/w latent size, C CLIP context, Lt/Dt T5 length and width.
"""

import importlib
import sys
import time

# scripts/train_dream.sh, less the data, output and masking-schedule flags (masking is held at one ratio).
TRAIN_DREAM_FLAGS = [
    "--img_size", "256", "--vae_embed_dim", "4", "--vae_stride", "8", "--patch_size", "2",
    "--diffloss_d", "3", "--diffloss_w", "1024", "--diffusion_batch_mul", "4",
    "--epochs", "48", "--warmup_epochs", "12", "--blr", "1.0e-4", "--weight_decay", "0.04",
    "--weight_mar_loss", "1.0", "--weight_clip_loss", "0.005",
    "--min_ratio_for_clip_loss", "0.25", "--min_masked_ratio_for_mar_loss", "0.50",
    "--vl_projection", "post_mlp_stablerep", "--ssl_mlp_dim", "1024", "--embed_dim", "256",
    "--text_drop_prob", "0.1", "--scale_loss_by_mask", "--filter_clip_loss",
]
SCALES = {"B": "base", "L": "large", "H": "huge", "G": "giant"}
CLIP_WEIGHT = 0.005


def official_args(official_main, scale, batch_size, mask_ratio):
    """The authors' argparse namespace for DREAM-`scale` with MAR masking narrowed to `mask_ratio`."""
    if scale not in SCALES:
        raise ValueError(f"model.scale={scale!r}: the authors' code has DREAM-{'/'.join(SCALES)} only")
    top = min(1.0, mask_ratio + 1e-3)
    return official_main.get_args_parser().parse_args(TRAIN_DREAM_FLAGS + [
        "--model", f"dream_{SCALES[scale]}_txt_conditional", "--batch_size", str(batch_size),
        "--mask_ratio_min", str(mask_ratio), "--mask_ratio_max", str(top), "--mask_ratio_mu", str(mask_ratio),
        "--mask_ratio_std", "1e-3",
    ])


def import_official_main(repo):
    """The authors' main module from the checkout at `repo`; a one-line error when it is not one."""
    import os

    if not os.path.isfile(os.path.join(repo, "main.py")) or not os.path.isdir(os.path.join(repo, "models")):
        raise FileNotFoundError(f"--official_repo={repo!r} is not a checkout of the authors' code (main.py and "
                                "models/ expected)")
    sys.path.insert(0, os.path.abspath(repo))
    return importlib.import_module("main")


def measure(repo, config, batch_size, mask_ratio, steps, warmup, t5):
    """Seconds per step of the authors' train step (see the module docstring) and the torch device's name.

    `t5`: the frozen T5's shape (compile.t5_shape) or None for none in the step."""
    import torch
    import transformers

    official_main = import_official_main(repo)
    args = official_args(official_main, config.model.scale, batch_size, mask_ratio)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = official_main.build_model(args, "dream").to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(args.beta1, args.beta2),
                                  weight_decay=args.weight_decay)
    m = config.model
    side, channels = args.img_size // args.vae_stride, args.vae_embed_dim
    x = torch.randn(batch_size, channels, side, side, device=device)
    captions = torch.randint(1, m.text_tower.vocab_size, (batch_size, m.text_tower.context_length), device=device)
    labels = torch.zeros(batch_size, dtype=torch.long, device=device)
    encoder = None
    if t5:
        encoder = transformers.T5EncoderModel(transformers.T5Config(
            d_model=t5["d_model"], d_kv=t5["d_kv"], num_heads=t5["num_heads"], d_ff=t5["d_ff"],
            num_layers=t5["num_layers"], feed_forward_proj="gated-gelu" if t5["gated"] else "relu",
            vocab_size=32128)).to(device).eval()
    ids = torch.randint(1, 32000, (batch_size, m.cond_len), device=device)
    features = torch.randn(batch_size, m.cond_len, args.t5_embed_dim, device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            with torch.no_grad():
                cond = encoder(input_ids=ids).last_hidden_state if encoder is not None else features
            loss, loss_clip, _, _ = model(x, captions, labels, cond, est_idx=0.0)
            total = args.weight_mar_loss * loss + CLIP_WEIGHT * loss_clip
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    del model, optimizer, encoder
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return seconds, name
