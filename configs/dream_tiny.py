"""The embedded default: a tiny DREAM on procedurally rendered captioned shapes, trained in 7-10 minutes on 2 CPU cores.

Nothing is downloaded: captions use a word-level tokenizer, the frozen text features for generation come from a
small random-init T5 encoder with a fixed seed (drawn as transformers initialises T5), and a fixed patch PCA
stands in for the frozen SD-VAE. The recipe is DREAM's: one encoder for both objectives, the filtered contrastive
loss and the diffusion loss, Masking Warmup with the paper's 48-epoch shape (mu from 0 to 1 over the first 36)
compressed into `total_steps`, MAR's diffusion head, CFG and Semantically Aligned Decoding. At its end the train
job writes a sample grid and prints zero-shot top-1 and the oracle alignment of plain and SAD samples
(docs/BENCHMARKS.md has the 3-seed table).

Deviations from the paper, each with its measured effect (docs/BENCHMARKS.md, "The embedded default's recipe"):
- text.tiny_t5: the frozen T5 is a 2-layer, width-64 T5 encoder with random weights drawn as transformers'
  T5PreTrainedModel._init_weights draws them (token embedding N(0, 1); models/t5.py), instead of the pretrained
  T5-Large. Its word features must survive unseen word orders (the held-out templates put the colour after the
  shape): with Flax's default init (embedding std 0.125, drowned by the blocks' mixing of the sentence) the colour
  word's feature found its own colour 43-65% of the time, and the trained generator matched the prompted colour
  0.58 on such a template against 0.86 on the other; with transformers' init 100% on every template
  (tests/test_frozen.py), and over the same 3600 steps plain shape & colour 0.598 -> 0.941 (seed 0, AMD host).
- tokenizer: 32x32 RGB images in 8x8 pixel patches projected on a whitened 32-dim patch PCA (16 tokens of dim 32)
  instead of 256x256 images through the SD-VAE (256 tokens of dim 16). The PCA keeps 96% of the patch variance and
  the oracle reads every attribute of its reconstructions; 4x4 raw patches (64 tokens of dim 48) step ~8x slower.
- diffusion.clip_denoised: the head sampler keeps its x0 estimate's pixels in [-1, 1] (MAR samples latents
  unconstrained). Without it, 50 respaced steps turn the whitened tokens into noise: shape & colour 0.00 vs 0.61.
- model.encoder_classes=1, encoder_buckets=1: the encoder runs key-masked over all 16 positions, one compiled step;
  capacity classes cost a ~40 s recompile per new plan (10 plans in one run) and save nothing at 16 tokens.
  sampling.encoder_buckets=1 likewise: the sampler's encoder runs over all 16 positions (the same samples up to
  float rounding), its 8 steps in 3 compiled loops instead of 5. A 64-prompt job's first call (compilation
  included), two runs each: plain 17.4 / 20.8 -> 16.3 / 12.7 s, SAD 24.9 / 26.1 -> 20.3 / 18.7 s; warm: plain
  1.03 / 1.32 -> 1.24 / 1.26 s, SAD 2.80 / 2.83 -> 2.96 / 3.28 s (`python benchmarks/throughput.py --steps=2
  --warmup=1 --sample_batch=64 --set mesh.num_devices=1 --set sampling.encoder_buckets=4`, then 1).
- widths: 128 wide, 3 encoder + 3 decoder blocks, 4 buffer tokens, a 1-block aligner, a 2-block width-128 head.
- batch 32 at lr 1e-3 (base_lr 8e-3 x 32 / 256), 1920 steps (40 an epoch) with a 2-epoch lr warmup, EMA 0.99:
  the generator follows the prompt after about as many optimiser steps at batch 64 as at 32, so 32 reaches it
  sooner; batch 16 steps 1.6x faster and 24 1.15x, but both fell short in the same number of steps (shape & colour
  0.535 vs 0.773 on seed 1, 0.578 vs 0.633 on seed 0, with the earlier T5 init at 3600 steps).
  1920 instead of 3600 steps once the T5 init was fixed: 6.7-9.4 instead of 14.6-15.8 minutes on the AMD host,
  plain shape & colour 0.637 / 0.805 / 0.906 over 3 seeds (0.941 for seed 0 at 3600; docs/BENCHMARKS.md).
- diffusion.batch_mul=2 instead of MAR's 4 noise draws per token: the step takes 0.78-0.84x the time; over 3 seeds
  plain shape & colour 0.673 vs 0.711 (0.621-0.719 vs 0.633-0.773), position 0.945 vs 0.931, zero-shot 1.000 both
  (the earlier T5 init, 3600 steps).
- sampling: 8 decoding steps (16 tokens), SAD after 4 of them (K=5; half the steps, 31% of the tokens decoded
  vs 29% at the authors' T_c=32 of 64), 50 head steps; T_c=3 to 7 measured alike (docs/BENCHMARKS.md).
- evals.alignment.num_prompts=256 (one sample each, +10 s), plain and SAD paired by common random numbers: with
  64 or 128 prompts one sample was 1.6% or 0.8% of an attribute, the size of SAD's gain.
"""

import ml_collections

from dream_jax import base_config
from dream_jax.evaluation import registry


def get_config():
    c = base_config.get_base_config("B")
    c.model.update(dict(
        scale="tiny",
        width=128, encoder_depth=3, decoder_depth=3, num_heads=4, mlp_dim=256,
        seq_len=16, token_dim=32, buffer_size=4, num_classes=1,
        attn_dropout=0.0, proj_dropout=0.0,
        aligner_depth=1, cond_dim=64, cond_len=16,
        embed_dim=64, proj_hidden_dim=128,
        diffloss_depth=2, diffloss_width=128,
        precision="float32",
        remat="none",  # activations of a tiny model are small; recomputing them would only cost time
        encoder_classes=1, encoder_buckets=1,
    ))
    c.model.text_tower.update(dict(vocab_size=64, context_length=16, width=64, depth=2, num_heads=2))
    c.tokenizer.update(dict(kind="pixels", image_size=32, patch_size=8, pca_dim=32))
    c.text.update(dict(clip_tokenizer="words", cond_encoder="tiny_t5"))
    c.text.tiny_t5 = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, seed=0)
    c.diffusion.update(dict(sampling_steps=50, clip_denoised=True, batch_mul=2))
    c.sampling.update(dict(num_iter=8, sad_step=4, num_candidates=5, batch_size=64, encoder_buckets=1))
    c.masking.num_groups = 4
    c.batch_size = 32
    c.num_epochs = 48
    c.steps_per_epoch = 40  # the warmup's 36 epochs end at step 1440; 48 epochs = 1920 steps
    c.total_steps = 1920
    c.optim.update(dict(base_lr=8e-3, warmup_epochs=2.0, weight_decay=0.04, ema_rate=0.99))
    c.mesh.shape = (-1, 1, 1)
    c.data.update(dict(source="shapes", num_workers=0, num_examples=100_000))
    c.log_every = 50
    c.checkpoint_every = 500
    c.final_samples = 4
    c.final_evals = ("zero_shot", "alignment")
    # Everything on the embedded synthetic set (labels: shape x colour, 28 classes); FID needs the user's Inception
    # weights: --config.evals.fid.enabled=True --config.evals.fid.inception_weights=PATH.
    c.evals = ml_collections.ConfigDict(dict(
        zero_shot=registry.settings("zero_shot", split="heldout", num_images=512, batch_size=128),
        linear_probe=registry.settings("linear_probe", test_split="heldout", num_train=2048, num_test=1024,
                                       steps=300, batch_size=128, train_batch_size=256),
        few_shot=registry.settings("few_shot", split="heldout", num_images=1024, batch_size=128),
        alignment=registry.settings("alignment", prompts="shapes", num_prompts=256),
        fid=registry.settings("fid", enabled=False, prompts="shapes", reference="shapes", num_samples=1000,
                              num_reference=1000),
        # An external CLIP's score of the FID's 1000 samples; needs the user's CLIP files:
        # --config.evals.clip_score.enabled=True --config.evals.clip_score.weights=PATH
        # --config.evals.clip_score.bpe_vocab=PATH/bpe_simple_vocab_16e6.txt.gz (model: ViT-L-14 unless set).
        clip_score=registry.settings("clip_score", enabled=False, prompts="shapes", num_prompts=1000),
        # Dense probes on the renderer's per-pixel labels (29 classes with the background) and depth map; 300 steps
        # at lr 1e-2 (DINOv2's 40k at 1e-3 would take minutes: at 1e-3 the 300 steps reach mIoU 0.09 instead of 0.21).
        segmentation=registry.settings("segmentation", num_train=512, num_test=256, steps=300, lr=1e-2,
                                       train_batch_size=32, batch_size=128),
        # 64 depth bins instead of DINOv2's 256: the bin logits at 32x32 pixels dominate the probe's CPU time.
        depth=registry.settings("depth", num_train=512, num_test=256, steps=300, lr=1e-2, train_batch_size=32,
                                batch_size=128, bins=64),
        # MAE's fine-tune recipe on 2048 train images, 160 steps of batch 64, with three changes measured on a
        # 3600-step tiny model (docs/EVALUATION.md): no RandomResizedCrop zoom or stretch, which change the rendered
        # shape (a stretched square is no square; top-1 0.24 at MAE's 0.08 or at 0.5 vs 0.72 uncropped, from a
        # step-500 checkpoint); no Mixup / CutMix (0.673 -> 0.743: label mixing is for long schedules); base lr 4e-3
        # instead of 5e-4 (0.743 -> 1.000; 2e-3: 0.991; 10 epochs at 5e-4: 0.939).
        finetune=registry.settings("finetune", test_split="heldout", num_train=2048, num_test=1024, batch_size=64,
                                   epochs=5, warmup_epochs=1.0, base_lr=4e-3, mixup=0.0, cutmix=0.0,
                                   crop_min_scale=1.0, checkpoint_every=80),
    ))
    return c
