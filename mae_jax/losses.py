"""The MAE reconstruction loss (MAE §3 and Table 1d)."""

import jax.numpy as jnp

NORM_PIX_EPS = 1e-6


def normalize_patches(patches: jnp.ndarray) -> jnp.ndarray:
  """Per-patch standardisation, the `norm_pix_loss` target.

  Uses the unbiased variance, like `torch.var` in the reference, so losses
  match the PyTorch implementation to float precision.
  """
  mean = patches.mean(axis=-1, keepdims=True)
  var = patches.var(axis=-1, keepdims=True, ddof=1)
  return (patches - mean) / jnp.sqrt(var + NORM_PIX_EPS)


def reconstruction_loss(pred: jnp.ndarray, target: jnp.ndarray,
                        mask: jnp.ndarray, *, norm_pix: bool,
                        on_all_patches: bool = False) -> jnp.ndarray:
  """Mean squared error per patch, averaged over the removed patches.

  Args:
    pred: (B, L, p*p*C) decoder output.
    target: (B, L, p*p*C) patchified input images.
    mask: (B, L) 1 for removed patches.
    norm_pix: standardise each target patch by its own mean and std.
    on_all_patches: average over every patch instead (the ablation, ~0.5%
      worse in the paper).

  Returns:
    A float32 scalar.
  """
  pred = pred.astype(jnp.float32)
  target = target.astype(jnp.float32)
  if norm_pix:
    target = normalize_patches(target)
  per_patch = jnp.mean((pred - target) ** 2, axis=-1)  # (B, L)
  if on_all_patches:
    return per_patch.mean()
  return (per_patch * mask).sum() / mask.sum()
