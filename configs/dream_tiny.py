"""The embedded default: a tiny DREAM on procedurally rendered captioned shapes, on a 2-core CPU.

Nothing is downloaded: 32x32 RGB images are patchified directly (the `pixels` tokenizer, 4x4 patches -> 64 tokens
of dim 48), captions use a word-level tokenizer, and the frozen text features for generation come from a small
random-init T5 encoder with a fixed seed. The recipe (masking warmup, losses, gating, optimiser) is the paper's,
with the epoch-based schedules compressed into `total_steps`.
"""

import ml_collections

from configs import common


def get_config():
    c = common.get_base_config("B")
    c.model.update(dict(
        scale="tiny",
        width=128, encoder_depth=3, decoder_depth=3, num_heads=4, mlp_dim=256,
        seq_len=64, token_dim=48, buffer_size=4, num_classes=1,
        attn_dropout=0.0, proj_dropout=0.0,
        aligner_depth=1, cond_dim=64, cond_len=16,
        embed_dim=64, proj_hidden_dim=128,
        diffloss_depth=2, diffloss_width=128,
        dtype="float32",
        remat=False,  # activations of a tiny model are small; recomputing them would only cost time
    ))
    c.model.text_tower.update(dict(vocab_size=64, context_length=16, width=64, depth=2, num_heads=2))
    c.tokenizer.update(dict(kind="pixels", image_size=32, patch_size=4))
    c.text.update(dict(clip_tokenizer="words", cond_encoder="tiny_t5"))
    c.text.tiny_t5 = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, seed=0)
    c.diffusion.update(dict(sampling_steps=50, clip_denoised=True))
    c.sampling.update(dict(num_iter=16, sad_step=8, num_candidates=5, batch_size=64))
    c.masking.num_groups = 4
    c.batch_size = 64
    c.num_epochs = 48
    c.steps_per_epoch = 50
    c.optim.update(dict(base_lr=4e-3, warmup_epochs=2.0, weight_decay=0.04, ema_rate=0.99))
    c.mesh.shape = (-1, 1, 1)
    c.data.update(dict(source="shapes", num_workers=0, num_examples=100_000))
    c.log_every = 20
    c.checkpoint_every = 200
    # Everything on the embedded synthetic set (labels: shape x colour, 28 classes); FID needs the user's Inception
    # weights: --config.evals.fid.enabled=True --config.evals.fid.inception_weights=PATH.
    c.evals = ml_collections.ConfigDict(dict(
        zero_shot=common.eval_settings("zero_shot", split="heldout", num_images=512, batch_size=128),
        linear_probe=common.eval_settings("linear_probe", test_split="heldout", num_train=2048, num_test=1024,
                                          steps=300, batch_size=128, train_batch_size=256),
        few_shot=common.eval_settings("few_shot", split="heldout", num_images=1024, batch_size=128),
        alignment=common.eval_settings("alignment", prompts="shapes", num_prompts=64),
        fid=common.eval_settings("fid", enabled=False, prompts="shapes", reference="shapes", num_samples=1000,
                                 num_reference=1000),
    ))
    return c
