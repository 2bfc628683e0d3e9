"""Models by name: ViT sizes, `build(model_config)` for the MAE and
`build_classifier(model_config)` for the evaluation protocols."""

import jax
import jax.numpy as jnp
import ml_collections

from mae_jax.models.classifier import ViTClassifier
from mae_jax.models.mae import MAE, MAEDecoder, MAEOutput
from mae_jax.models.vit import VisionEncoder

# width, depth, heads of the standard ViT sizes (MLP ratio 4 throughout).
VIT_SIZES = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def encoder_size(name: str) -> dict:
  """'base/16' -> the encoder fields of a model config."""
  size, _, patch = name.partition("/")
  if size not in VIT_SIZES or not patch.isdigit():
    raise ValueError(f"unknown model {name!r}: use <size>/<patch> with size in "
                     f"{sorted(VIT_SIZES)}, e.g. 'base/16'")
  width, depth, heads = VIT_SIZES[size]
  return dict(patch_size=int(patch), width=width, depth=depth, num_heads=heads,
              mlp_dim=4 * width)


def size_name(model_config: ml_collections.ConfigDict) -> str:
  """'large/16' for the standard sizes, else the width and depth."""
  for name, (width, depth, heads) in VIT_SIZES.items():
    if (model_config.width, model_config.depth,
        model_config.num_heads) == (width, depth, heads):
      return f"{name}/{model_config.patch_size}"
  return (f"vit-w{model_config.width}-d{model_config.depth}"
          f"/{model_config.patch_size}")


def compute_dtype(name: str, platform: str | None = None):
  """'auto' is float32 on CPU (exact, fast there) and bfloat16 elsewhere.

  `platform` is where the step will run ('cpu', 'tpu', 'gpu'); by default
  this process's default backend. A step compiled ahead of time for a TPU on
  a CPU machine names 'tpu' here.
  """
  if name == "auto":
    platform = platform or jax.default_backend()
    return jnp.float32 if platform == "cpu" else jnp.bfloat16
  if name not in DTYPES:
    raise ValueError(f"dtype={name!r} is not one of {['auto', *DTYPES]}")
  return DTYPES[name]


def build(model_config: ml_collections.ConfigDict) -> MAE:
  """The MAE described by `model_config` (see configs/common.py)."""
  fields = dict(model_config)
  fields["dtype"] = compute_dtype(fields["dtype"])
  return MAE(**fields)


def build_classifier(model_config: ml_collections.ConfigDict,
                     axis_name: str | None = None) -> ViTClassifier:
  """The ViT classifier described by `model_config` (configs/common.py).

  `axis_name` is the pmap axis over which the linear probe's BatchNorm
  averages batch statistics in training.
  """
  fields = dict(model_config)
  fields["dtype"] = compute_dtype(fields["dtype"])
  return ViTClassifier(**fields, axis_name=axis_name)


__all__ = ["MAE", "MAEDecoder", "MAEOutput", "VisionEncoder", "ViTClassifier",
           "VIT_SIZES", "build", "build_classifier", "compute_dtype",
           "encoder_size", "size_name"]
