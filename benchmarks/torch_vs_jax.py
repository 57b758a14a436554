"""Train-step throughput of our standalone PyTorch DREAM against dream_jax, same config and device, one run.

    python benchmarks/torch_vs_jax.py                      # tiny config on CPU
    python benchmarks/torch_vs_jax.py --config=b --bf16 --compile   # DREAM-B's model on a GPU

Both sides start from the same weights (the JAX init, exported) and run the full step: encoder, projection,
text tower, aligner, decoder, DiffLoss with batch_mul copies, filtered contrastive loss, backward, global-norm
clip and AdamW (+ EMA for JAX; torch keeps no EMA, which favours it slightly). The torch side gets the frozen
text features (T5) precomputed once, the JAX side recomputes them in its step, which favours torch as well.
torch runs the encoder and decoder per mask group (equal masking per group, as on the authors' GPUs); attention
uses SDPA; `--compile` wraps the model pieces in torch.compile, `--bf16` autocasts them (JAX then uses
model.precision=bfloat16). Prints one JSON line with examples/s of each side and the ratio jax / torch.
"""

import argparse
import json
import os
import sys
import time

import jax
import numpy as np
import torch

# configs/ is not installed: the repository root holds it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import dream_b, dream_tiny  # noqa: E402
from dream_jax import runtime, sharding  # noqa: E402
from dream_jax.data import pipeline  # noqa: E402
from dream_jax.interop import to_pytorch  # noqa: E402
from dream_jax.interop import torch_modules as tm  # noqa: E402
from dream_jax.training import masking, train  # noqa: E402


def _config(args):
    """dream_tiny, or DREAM-B's model on the tiny frontend (32 px pixels, 2x2 patches: 256 tokens of dim 12
    instead of 16; a tiny frozen T5 with 128 tokens) so that nothing needs downloading."""
    config = dream_tiny.get_config()
    if args.config == "b":
        b = dream_b.get_config().model
        config.model.update({k: b[k] for k in b if k not in ("token_dim", "cond_dim", "text_tower")})
        config.model.update({"token_dim": 12, "cond_dim": config.text.tiny_t5.d_model, "attn_dropout": 0.0,
                             "proj_dropout": 0.0})
        config.model.text_tower.update(b.text_tower)
        config.tokenizer.update({"image_size": 32, "patch_size": 2})
        config.batch_size = 64
    config.batch_size = args.batch_size or config.batch_size
    config.masking.num_groups = min(config.masking.num_groups, config.batch_size)
    config.model.precision = "bfloat16" if args.bf16 else "float32"
    return config


def _time(step, warmup, steps, sync):
    for _ in range(warmup):
        sync(step())
    start = time.perf_counter()
    for _ in range(steps):
        out = step()
    sync(out)
    return (time.perf_counter() - start) / steps


def jax_side(config, args):
    rt = runtime.create(config)
    mesh, frozen = rt.mesh, rt.frozen
    batch = sharding.global_batch(next(iter(pipeline.make_dataset(config, rt.tokenizers))), mesh, config)
    state = train.create_state(config, mesh)
    step_fn = train.compile_step(config, mesh, frozen, batch)
    holder = {"state": state}

    def step():
        holder["state"], metrics = step_fn(holder["state"], frozen, batch)
        return metrics["loss"]

    variables = {"params": jax.device_get(state.params), "batch_stats": jax.device_get(state.batch_stats)}
    # Inputs for the torch side from the same first batch (tokens and frozen text features).
    rngs = train.step_rngs(config, 0)
    tokens, _, _, cond = jax.jit(lambda b: train.prepare_inputs(config, frozen, b, rngs, 0))(batch)
    inputs = {"tokens": np.array(tokens), "cond": np.array(cond), "clip_ids": np.array(batch["clip_ids"])}
    seconds = _time(step, args.warmup, args.steps, lambda x: jax.block_until_ready(x))
    return seconds, variables, inputs


def torch_side(config, variables, inputs, args):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = tm.DREAM.from_args(to_pytorch.plain_args(config)).to(device)
    model.load_state_dict(to_pytorch.state_dict(config, variables["params"], variables["batch_stats"]), strict=True)
    model.train()
    if args.compile:
        for name in ("encoder_blocks", "decoder_blocks", "text_aligner", "transformer", "diffloss"):
            setattr(model, name, torch.compile(getattr(model, name)))
    o = config.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.base_lr * config.batch_size / 256, betas=(o.b1, o.b2),
                                  weight_decay=o.weight_decay)
    tokens = torch.from_numpy(inputs["tokens"]).to(device)
    cond = torch.from_numpy(inputs["cond"]).to(device)
    clip_ids = torch.from_numpy(inputs["clip_ids"]).long().to(device)
    b, length, dim = tokens.shape
    groups, copies = config.masking.num_groups, config.diffusion.batch_mul
    rng = np.random.default_rng(0)
    counter = {"step": 0}

    def step():
        s = counter["step"] = counter["step"] + 1
        ratios = np.asarray(masking.sample_mask_ratios(jax.random.key(s), s, config))
        counts = np.repeat(np.ceil(ratios * length).astype(int), b // groups)
        ranks = np.argsort(np.argsort(rng.random((b, length)), axis=1), axis=1)
        mask = torch.from_numpy(ranks < counts[:, None]).to(device)
        t = torch.randint(0, config.diffusion.num_steps, (copies * b * length,), device=device)
        noise = torch.randn(copies * b * length, dim, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss, _ = tm.dream_loss(model, tokens, mask, clip_ids, cond, t, noise, num_groups=groups,
                                    gen_weight=config.loss.gen_weight, clip_weight=config.loss.clip_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        optimizer.step()
        return loss

    sync = (lambda x: torch.cuda.synchronize()) if device.type == "cuda" else (lambda x: x.item())
    return _time(step, args.warmup, args.steps, sync), device


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("tiny", "b"), default="tiny")
    parser.add_argument("--batch_size", type=int, default=0, help="0: the config's")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="torch.compile the torch model's blocks")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 compute on both sides")
    args = parser.parse_args()
    config = _config(args)
    jax_seconds, variables, inputs = jax_side(config, args)
    torch_seconds, device = torch_side(config, variables, inputs, args)
    result = {
        "config": args.config, "batch_size": config.batch_size, "precision": config.model.precision,
        "torch_compile": args.compile, "jax_device": str(jax.devices()[0].platform), "torch_device": str(device),
        "jax_examples_per_s": config.batch_size / jax_seconds, "torch_examples_per_s": config.batch_size / torch_seconds,
        "jax_over_torch": torch_seconds / jax_seconds,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
