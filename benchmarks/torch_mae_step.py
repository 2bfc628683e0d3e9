"""The same MAE pretraining step in PyTorch, for BENCHMARKS.md's ratio.

HuggingFace's ViTMAEForPreTraining configured as MAE ViT-B/16 (decoder
8 x 512, 16 heads, LayerNorm eps 1e-6, norm-pix loss, mask ratio 0.75),
AdamW (0.9, 0.95) with weight decay on weight matrices only: one full
training step (forward, backward, optimizer), float32. Needs torch and
transformers (`pip install torch==2.13.0 transformers`).

  python benchmarks/torch_mae_step.py --batch=8 --steps=10 --warmup=2
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Imports no JAX: the reference's process stays PyTorch's alone.
from mae_jax import huge_pages  # pylint: disable=g-import-not-at-top,wrong-import-position


def vit_mae_base() -> transformers.ViTMAEConfig:
  return transformers.ViTMAEConfig(
      hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
      intermediate_size=3072, hidden_act="gelu", layer_norm_eps=1e-6,
      image_size=224, patch_size=16, qkv_bias=True,
      decoder_hidden_size=512, decoder_num_hidden_layers=8,
      decoder_num_attention_heads=16, decoder_intermediate_size=2048,
      mask_ratio=0.75, norm_pix_loss=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  args = parser.parse_args()
  if args.batch < 1 or args.steps < 1 or args.warmup < 0:
    parser.error("--batch and --steps must be at least 1, --warmup at least 0")

  torch.manual_seed(0)
  model = transformers.ViTMAEForPreTraining(vit_mae_base()).train()
  decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
  no_decay = [p for p in model.parameters()
              if p.requires_grad and p.ndim <= 1]
  optimizer = torch.optim.AdamW(
      [{"params": decay, "weight_decay": 0.05},
       {"params": no_decay, "weight_decay": 0.0}],
      lr=1.5e-4 * args.batch / 256, betas=(0.9, 0.95))
  images = torch.randn(args.batch, 3, 224, 224)

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = model(pixel_values=images).loss
    loss.backward()
    optimizer.step()
    return loss

  for _ in range(args.warmup):
    step()
  times = []
  usage_before = resource.getrusage(resource.RUSAGE_SELF)
  for _ in range(args.steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  usage = resource.getrusage(resource.RUSAGE_SELF)
  step_s = statistics.median(times)
  print(json.dumps({
      "impl": "pytorch (transformers ViTMAEForPreTraining)",
      "torch": torch.__version__, "transformers": transformers.__version__,
      "threads": torch.get_num_threads(), "model": "base/16",
      "decoder": "8x512", "batch": args.batch, "dtype": "float32",
      "img_per_s": args.batch / step_s, "step_s_median": step_s,
      "step_s_min": min(times),
      **huge_pages.usage_per_step(usage_before, usage, args.steps)}))


if __name__ == "__main__":
  main()
