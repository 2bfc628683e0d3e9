"""Models by name: ViT sizes, `build(model_config)` for the pretraining
model (MAE or CAE, by `model_config.name`),
`build_classifier(model_config)` for the evaluation protocols and
`build_encoder(model_config)` for the k-NN of a frozen encoder; `dalle` holds
CAE's DALL-E tokenizer."""

import jax
import jax.numpy as jnp
import ml_collections

from mae_jax import patches
from mae_jax.models.cae import CAE, CAEOutput
from mae_jax.models.classifier import ViTClassifier
from mae_jax.models.dalle import DalleEncoder
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
PRETRAINING_MODELS = {"mae": MAE, "cae": CAE}
# Model config fields that the task reads, not the model: the masking it
# draws (masking.py), what it loads and how it initialises.
TASK_FIELDS = ("name", "masking", "tokenizer_path", "weight_init")


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


def method_of(model_config: ml_collections.ConfigDict) -> str:
  """'mae' or 'cae'; configs written before CAE existed are MAE's."""
  name = model_config.get("name", "mae")
  if name not in PRETRAINING_MODELS:
    raise ValueError(f"model.name={name!r} is not known; use one of "
                     f"{sorted(PRETRAINING_MODELS)}")
  return name


def build(model_config: ml_collections.ConfigDict) -> MAE | CAE:
  """The MAE or CAE described by `model_config` (configs/common.py)."""
  model_cls = PRETRAINING_MODELS[method_of(model_config)]
  fields = {k: v for k, v in model_config.items() if k not in TASK_FIELDS}
  fields["dtype"] = compute_dtype(fields["dtype"])
  return model_cls(**fields)


def build_classifier(model_config: ml_collections.ConfigDict,
                     axis_name: str | None = None) -> ViTClassifier:
  """The ViT classifier described by `model_config` (configs/common.py).

  `axis_name` is the pmap axis over which the linear probe's BatchNorm
  averages batch statistics in training.
  """
  fields = dict(model_config)
  fields["dtype"] = compute_dtype(fields["dtype"])
  return ViTClassifier(**fields, axis_name=axis_name)


def build_encoder(model_config: ml_collections.ConfigDict) -> VisionEncoder:
  """The bare encoder described by `model_config` (configs/common.py
  `encoder_model`): what a classifier holds under 'encoder', without a head.
  """
  grid = patches.grid_size(model_config.image_size, model_config.patch_size)
  return VisionEncoder(
      model_config.patch_size, model_config.width, model_config.depth,
      model_config.num_heads, model_config.mlp_dim,
      model_config.layer_norm_eps, model_config.remat,
      compute_dtype(model_config.dtype),
      pos_embed_grid=(grid, grid) if model_config.learned_pos_embed else None,
      layer_scale_init=model_config.layer_scale_init,
      key_bias=model_config.key_bias,
      sincos_order=model_config.sincos_order)


__all__ = ["CAE", "CAEOutput", "DalleEncoder", "MAE", "MAEDecoder",
           "MAEOutput", "VisionEncoder", "ViTClassifier", "VIT_SIZES",
           "build", "build_classifier", "build_encoder", "compute_dtype",
           "encoder_size", "method_of", "size_name"]
