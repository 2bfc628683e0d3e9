"""Official MAE and HuggingFace ViTMAE weights <-> mae_jax parameters;
official CAE encoders and the DALL-E tokenizer's weights -> mae_jax
parameters.

Reads
- the official release (facebookresearch/mae): `.pth` files holding
  {'model': state_dict} of a pretrained MAE with its decoder (the
  `mae_visualize_*` files), of a pretrained encoder alone (`mae_pretrain_*`)
  or of a fine-tuned classifier (`mae_finetuned_*`);
- HuggingFace ViTMAE directories: config.json + model.safetensors (or a
  sharded index, or pytorch_model.bin);
- the official CAE release (Atten4Vis/CAE): `.pth` files of a pretrained CAE
  ('encoder.*' next to its regressor and decoder) or of its encoder alone;
  the encoder is kept (`load_official_cae`);
- the DALL-E dVAE encoder (`encoder.pkl`, a pickled `dall_e` module), CAE's
  tokenizer (models/dalle.py), read without running the pickle's code;
and writes HuggingFace ViTMAE directories that `transformers` loads.
`.pth`/`.bin` files are pickles and need torch; safetensors need only numpy.

PyTorch and this package lay out the same weights differently:
- a Dense kernel is (in, out), the transpose of a torch Linear weight;
- the patch embedding is a Dense on patches flattened in (p, p, 3) order, i.e.
  the conv weight (D, 3, p, p) permuted to (p, p, 3, D) and flattened;
- the fused qkv is [q | k | v] as in the official Block, where HuggingFace
  keeps three Linears;
- the MAE's position embeddings are the fixed 2-D sin-cos table, generated,
  not stored: a checkpoint's table is compared with ours, never dropped
  unseen. Fine-tuned classifiers learn theirs; it becomes 'encoder/pos_embed'.
- CAE's encoder (BEiT's blocks) has separate q and v biases and no k bias:
  they become our fused bias [q | 0 | v]; its layer scales 'gamma_1/2'
  become 'layer_scale_attn/mlp'; its sin-cos table has the row's half first
  (`sincos_order='h_first'`), which the conversion checks.

Command line (the checkpoint it writes is what `config.init_from` takes):
  python -m mae_jax.convert --src=mae_visualize_vit_large.pth --dst=DIR
  python -m mae_jax.convert --src=HF_DIR --dst=DIR
  python -m mae_jax.convert --src=cae_base_1600ep.pth --dst=DIR   (CAE)
  python -m mae_jax.convert --src=OUR_WORKDIR --dst=HF_DIR --format=hf
  python -m mae_jax.convert --src=encoder.pkl --dst=DIR   (CAE's tokenizer)
A --dst that is not empty is refused unless --overwrite.
"""

import argparse
import dataclasses
import functools
import json
import math
import pickle
import re
import types
import warnings
from collections.abc import Mapping
from typing import Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import safetensors
import safetensors.numpy
from etils import epath

from mae_jax import cli
from mae_jax import checkpointing
from mae_jax import models
from mae_jax import patches
from mae_jax.models import dalle
from mae_jax.models import vit

# The official decoders all have 16 heads, which their tensors do not show.
OFFICIAL_DECODER_HEADS = 16
# The encoder options of models/vit.py in each release; CAE's layer scale
# init is set apart, by size.
MAE_ENCODER_OPTIONS = dict(layer_scale_init=0.0, key_bias=True,
                           sincos_order="w_first")
CAE_ENCODER_OPTIONS = dict(key_bias=False, sincos_order="h_first")
POS_EMBED_ATOL = 1e-4  # the official table is computed in float32
PTH_HINT = ("pip install torch --extra-index-url "
            "https://download.pytorch.org/whl/cpu (the CPU build is enough)")


# ------------------------------------------------------------------ reading


def _import_torch(path: str):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ImportError(
        f"{path} is a PyTorch pickle; reading it needs torch: {PTH_HINT}. "
        "Safetensors files need no torch.") from error
  return torch


def _torch_load_reason(error: Exception) -> str:
  """Why torch.load refused a file, in a line, without its advice to load
  it unsafely (weights_only=False runs whatever code the file holds)."""
  if isinstance(error, KeyError):
    return "not a pickle or zip archive"
  message = str(error).split("WeightsUnpickler error:")[-1]
  lines = [line.strip() for line in message.splitlines() if line.strip()
           and "weights_only" not in line and "documentation" not in line]
  return lines[0] if lines else type(error).__name__


def read_torch_file(path: str) -> dict[str, np.ndarray]:
  """A `.pth`/`.bin` state dict (or {'model': state dict}) as float32 arrays."""
  torch = _import_torch(path)
  # weights_only refuses arbitrary pickled code; the official training
  # checkpoints also hold their argparse arguments, allowed by name.
  with epath.Path(path).open("rb") as f, torch.serialization.safe_globals(
      [argparse.Namespace]):
    try:
      checkpoint = torch.load(f, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, KeyError, RuntimeError, EOFError,
            ValueError) as e:
      raise ValueError(
          f"{path} is not a PyTorch checkpoint of tensors "
          f"({_torch_load_reason(e)}); --src takes an official MAE .pth, a "
          "HuggingFace ViTMAE directory or a checkpoint of ours") from e
  state = checkpoint.get("model", checkpoint)
  return {k: v.detach().float().numpy() for k, v in state.items()
          if torch.is_tensor(v)}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  # Through jax arrays: numpy has no bfloat16, which half-precision exports
  # use, and safetensors' numpy loader refuses it.
  with safetensors.safe_open(path, framework="flax") as f:
    return {k: np.asarray(f.get_tensor(k), np.float32) for k in f.keys()}


def _read_any(path: str) -> dict[str, np.ndarray]:
  return (read_safetensors(path) if path.endswith(".safetensors")
          else read_torch_file(path))


def _read_hf_weights(directory: epath.Path) -> dict[str, np.ndarray]:
  """The weights of a HuggingFace model directory, sharded or not."""
  for name in ("model.safetensors", "pytorch_model.bin"):
    if (directory / name).exists():
      return _read_any(str(directory / name))
    index = directory / f"{name}.index.json"
    if index.exists():
      shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
      state = {}
      for shard in shards:
        state.update(_read_any(str(directory / shard)))
      return state
  raise FileNotFoundError(
      f"{directory} has a config.json but no model.safetensors, "
      "pytorch_model.bin or a sharded index of either")


# ------------------------------------------------- tensor correspondences


@dataclasses.dataclass(frozen=True)
class _Rule:
  """One parameter of ours <- one or more checkpoint tensors."""
  ours: str  # 'encoder/transformer/blocks_0/attn/qkv/kernel'
  theirs: tuple[str, ...]
  to_ours: Callable[..., np.ndarray]
  # The inverse, for export; None where there is none (a folded BatchNorm).
  to_theirs: Callable[[np.ndarray], tuple[np.ndarray, ...]] | None


def _copy(ours: str, theirs: str) -> _Rule:
  return _Rule(ours, (theirs,), lambda a: a, lambda a: (a,))


def _linear(ours: str, theirs: str) -> list[_Rule]:
  return [_Rule(f"{ours}/kernel", (f"{theirs}.weight",), lambda w: w.T,
                lambda k: (k.T,)),
          _copy(f"{ours}/bias", f"{theirs}.bias")]


def _norm(ours: str, theirs: str) -> list[_Rule]:
  return [_copy(f"{ours}/scale", f"{theirs}.weight"),
          _copy(f"{ours}/bias", f"{theirs}.bias")]


def _patch_embed(ours: str, theirs: str) -> list[_Rule]:
  """Conv2d (D, 3, p, p) <-> Dense on (p, p, 3) patches (p*p*3, D)."""
  def to_ours(w):
    return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])

  def to_theirs(k):
    p = math.isqrt(k.shape[0] // 3)
    return (k.reshape(p, p, 3, -1).transpose(3, 2, 0, 1),)

  return [_Rule(f"{ours}/kernel", (f"{theirs}.weight",), to_ours, to_theirs),
          _copy(f"{ours}/bias", f"{theirs}.bias")]


def _split_qkv(ours: str, q: str, k: str, v: str) -> list[_Rule]:
  """Three Linears (HuggingFace) <-> our fused [q | k | v] Dense."""
  names = (q, k, v)
  return [
      _Rule(f"{ours}/kernel", tuple(f"{n}.weight" for n in names),
            lambda *w: np.concatenate(w, axis=0).T,
            lambda kernel: tuple(np.split(kernel.T, 3, axis=0))),
      _Rule(f"{ours}/bias", tuple(f"{n}.bias" for n in names),
            lambda *b: np.concatenate(b),
            lambda bias: tuple(np.split(bias, 3))),
  ]


def _official_block(ours: str, theirs: str) -> list[_Rule]:
  """timm's Block, as in models_mae.py / models_vit.py."""
  return (_norm(f"{ours}/norm1", f"{theirs}.norm1")
          + _linear(f"{ours}/attn/qkv", f"{theirs}.attn.qkv")
          + _linear(f"{ours}/attn/proj", f"{theirs}.attn.proj")
          + _norm(f"{ours}/norm2", f"{theirs}.norm2")
          + _linear(f"{ours}/mlp/fc1", f"{theirs}.mlp.fc1")
          + _linear(f"{ours}/mlp/fc2", f"{theirs}.mlp.fc2"))


def _qv_bias(ours: str, q_bias: str, v_bias: str) -> _Rule:
  """BEiT's q_bias and v_bias <-> our fused [q | k | v] bias, k = 0."""
  return _Rule(ours, (q_bias, v_bias),
               lambda q, v: np.concatenate([q, np.zeros_like(q), v]),
               lambda bias: tuple(np.split(bias, 3)[::2]))


def _cae_block(ours: str, theirs: str, layer_scale: bool) -> list[_Rule]:
  """CAE's (BEiT's) Block, as in models/modeling_cae_helper.py."""
  rules = (_norm(f"{ours}/norm1", f"{theirs}.norm1")
           + [_Rule(f"{ours}/attn/qkv/kernel", (f"{theirs}.attn.qkv.weight",),
                    lambda w: w.T, lambda k: (k.T,)),
              _qv_bias(f"{ours}/attn/qkv/bias", f"{theirs}.attn.q_bias",
                       f"{theirs}.attn.v_bias")]
           + _linear(f"{ours}/attn/proj", f"{theirs}.attn.proj")
           + _norm(f"{ours}/norm2", f"{theirs}.norm2")
           + _linear(f"{ours}/mlp/fc1", f"{theirs}.mlp.fc1")
           + _linear(f"{ours}/mlp/fc2", f"{theirs}.mlp.fc2"))
  if layer_scale:
    rules += [_copy(f"{ours}/layer_scale_attn", f"{theirs}.gamma_1"),
              _copy(f"{ours}/layer_scale_mlp", f"{theirs}.gamma_2")]
  return rules


def _hf_block(ours: str, theirs: str) -> list[_Rule]:
  """HuggingFace's ViTMAELayer, in the names the Hub's checkpoints use."""
  attn = f"{theirs}.attention.attention"
  return (_norm(f"{ours}/norm1", f"{theirs}.layernorm_before")
          + _split_qkv(f"{ours}/attn/qkv", f"{attn}.query", f"{attn}.key",
                       f"{attn}.value")
          + _linear(f"{ours}/attn/proj", f"{theirs}.attention.output.dense")
          + _norm(f"{ours}/norm2", f"{theirs}.layernorm_after")
          + _linear(f"{ours}/mlp/fc1", f"{theirs}.intermediate.dense")
          + _linear(f"{ours}/mlp/fc2", f"{theirs}.output.dense"))


def _official_rules(model_config: ml_collections.ConfigDict, *,
                    decoder: bool, final_norm: bool) -> list[_Rule]:
  rules = [_copy("encoder/cls_token", "cls_token"),
           *_patch_embed("encoder/patch_embed", "patch_embed.proj")]
  for i in range(model_config.depth):
    rules += _official_block(f"encoder/transformer/blocks_{i}", f"blocks.{i}")
  if final_norm:
    rules += _norm("encoder/transformer/norm", "norm")
  if decoder:
    rules += [*_linear("decoder/embed", "decoder_embed"),
              _copy("decoder/mask_token", "mask_token")]
    for i in range(model_config.decoder_depth):
      rules += _official_block(f"decoder/transformer/blocks_{i}",
                               f"decoder_blocks.{i}")
    rules += [*_norm("decoder/transformer/norm", "decoder_norm"),
              *_linear("decoder/pred", "decoder_pred")]
  return rules


def _hf_rules(model_config: ml_collections.ConfigDict, *,
              decoder: bool) -> list[_Rule]:
  rules = [_copy("encoder/cls_token", "vit.embeddings.cls_token"),
           *_patch_embed("encoder/patch_embed",
                         "vit.embeddings.patch_embeddings.projection")]
  for i in range(model_config.depth):
    rules += _hf_block(f"encoder/transformer/blocks_{i}",
                       f"vit.encoder.layer.{i}")
  rules += _norm("encoder/transformer/norm", "vit.layernorm")
  if decoder:
    rules += [*_linear("decoder/embed", "decoder.decoder_embed"),
              _copy("decoder/mask_token", "decoder.mask_token")]
    for i in range(model_config.decoder_depth):
      rules += _hf_block(f"decoder/transformer/blocks_{i}",
                         f"decoder.decoder_layers.{i}")
    rules += [*_norm("decoder/transformer/norm", "decoder.decoder_norm"),
              *_linear("decoder/pred", "decoder.decoder_pred")]
  return rules


def _folded_probe_head(eps: float = 1e-6) -> list[_Rule]:
  """The linear probe's BatchNorm(affine=False) -> Linear, as one Linear.

  Exact at inference, where the BatchNorm applies its running statistics:
  W (x - mean) / s + b = (W / s) x + (b - W mean / s), s = sqrt(var + eps).
  """
  stats = ("head.0.running_mean", "head.0.running_var")

  def kernel(mean, var, w):
    del mean
    return (w / np.sqrt(var + eps)).T

  def bias(mean, var, w, b):
    return b - (w / np.sqrt(var + eps)) @ mean

  return [_Rule("head/kernel", (*stats, "head.1.weight"), kernel, None),
          _Rule("head/bias", (*stats, "head.1.weight", "head.1.bias"), bias,
                None)]


# The same HuggingFace tensors under other names -> the Hub's names:
# transformers 5 renames them in memory and writes the decoder's layers as
# 'decoder_encoder.layer'; a ViTMAEModel saved alone has no 'vit.' prefix.
_HF_SPELLINGS = [
    (r"^(?!vit\.|decoder\.)", "vit."),
    (r"^vit\.layers\.", "vit.encoder.layer."),
    (r"^decoder\.decoder_encoder\.layer\.", "decoder.decoder_layers."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
]


def _hub_names(state: dict[str, np.ndarray]):
  """(state under the Hub's names, Hub name -> the checkpoint's own name)."""
  renamed, original = {}, {}
  for key, value in state.items():
    name = key
    for pattern, replacement in _HF_SPELLINGS:
      name = re.sub(pattern, replacement, name)
    renamed[name], original[name] = value, key
  return renamed, original


# ------------------------------------------------------------ model configs


def mae_config(*, image_size: int, patch_size: int, width: int, depth: int,
               num_heads: int, mlp_dim: int, decoder_width: int,
               decoder_depth: int, decoder_num_heads: int,
               decoder_mlp_dim: int, mask_ratio: float = 0.75,
               norm_pix_loss: bool = False, layer_norm_eps: float = 1e-6
               ) -> ml_collections.ConfigDict:
  """A model config for `models.build`, with every field configs/common.py
  `mae_model` has."""
  return ml_collections.ConfigDict(dict(
      name="mae", image_size=image_size, patch_size=patch_size, width=width,
      depth=depth, num_heads=num_heads, mlp_dim=mlp_dim,
      **MAE_ENCODER_OPTIONS, drop_path_rate=0.0, masking="random",
      decoder_width=decoder_width, decoder_depth=decoder_depth,
      decoder_num_heads=decoder_num_heads, decoder_mlp_dim=decoder_mlp_dim,
      mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss,
      loss_on_all_patches=False, encoder_mask_tokens=False,
      layer_norm_eps=layer_norm_eps, dtype="auto", remat=False))


def cae_config(*, image_size: int, patch_size: int, width: int, depth: int,
               num_heads: int, mlp_dim: int, layer_scale_init: float,
               layer_norm_eps: float = 1e-6) -> ml_collections.ConfigDict:
  """A CAE model config for `models.build`, with every field configs/common.py
  `cae_model` has: the official recipe's regressor, decoder and loss around
  an encoder of these sizes."""
  return ml_collections.ConfigDict(dict(
      name="cae", image_size=image_size, patch_size=patch_size, width=width,
      depth=depth, num_heads=num_heads, mlp_dim=mlp_dim,
      **CAE_ENCODER_OPTIONS, layer_scale_init=layer_scale_init,
      drop_path_rate=0.1, masking="block", mask_ratio=0.5, regressor_depth=4,
      decoder_depth=4, decoder_num_heads=num_heads,
      decoder_layer_scale_init=layer_scale_init, target="dalle",
      tokenizer_path="", norm_pix_loss=True, align_weight=2.0,
      weight_init="xavier", layer_norm_eps=layer_norm_eps, dtype="auto",
      remat=False))


def classifier_config(*, image_size: int, patch_size: int, width: int,
                      depth: int, num_heads: int, mlp_dim: int,
                      num_classes: int, pooling: str,
                      layer_norm_eps: float = 1e-6
                      ) -> ml_collections.ConfigDict:
  """A model config for `models.build_classifier` of a fine-tuned model
  (its position embedding learned)."""
  return ml_collections.ConfigDict(dict(
      image_size=image_size, patch_size=patch_size, width=width, depth=depth,
      num_heads=num_heads, mlp_dim=mlp_dim, num_classes=num_classes,
      pooling=pooling, head_batch_norm=False, head_init_std=2e-5,
      drop_path_rate=0.0, learned_pos_embed=True,
      layer_norm_eps=layer_norm_eps, dtype="auto", remat=False,
      **MAE_ENCODER_OPTIONS))


def mode_of(model_config: ml_collections.ConfigDict) -> str:
  """'finetune' for a classifier's config, 'pretrain' for an MAE's."""
  return "finetune" if "num_classes" in model_config else "pretrain"


def _override(model_config: ml_collections.ConfigDict, overrides: dict):
  unknown = sorted(set(overrides) - set(model_config))
  if unknown:
    raise ValueError(f"unknown model config fields {unknown}; the fields are "
                     f"{sorted(model_config)}")
  model_config.update(overrides)
  return model_config


# HuggingFace's ViTMAEConfig defaults, for fields a config.json leaves out.
_HF_DEFAULTS = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, hidden_act="gelu", layer_norm_eps=1e-12,
    image_size=224, patch_size=16, num_channels=3, qkv_bias=True,
    decoder_num_attention_heads=16, decoder_hidden_size=512,
    decoder_num_hidden_layers=8, decoder_intermediate_size=2048,
    mask_ratio=0.75, norm_pix_loss=False)


def _square(value, name: str, path) -> int:
  if isinstance(value, (list, tuple)):
    if len(set(value)) != 1:
      raise ValueError(f"{path}: {name}={value} is not square; mae_jax "
                       "models take square images and patches")
    value = value[0]
  return int(value)


def _from_hf_config(hf: dict, path) -> ml_collections.ConfigDict:
  hf = {**_HF_DEFAULTS, **hf}
  if hf.get("model_type", "vit_mae") != "vit_mae":
    raise ValueError(f"{path}: model_type={hf['model_type']!r}, not a ViTMAE "
                     "model ('vit_mae')")
  unsupported = {k: hf[k] for k, v in dict(
      hidden_act="gelu", qkv_bias=True, num_channels=3).items() if hf[k] != v}
  if unsupported:
    raise ValueError(f"{path}: {unsupported} is not supported; mae_jax's ViT "
                     "has exact GELU, qkv biases and RGB input")
  return mae_config(
      image_size=_square(hf["image_size"], "image_size", path),
      patch_size=_square(hf["patch_size"], "patch_size", path),
      width=hf["hidden_size"], depth=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"], mlp_dim=hf["intermediate_size"],
      decoder_width=hf["decoder_hidden_size"],
      decoder_depth=hf["decoder_num_hidden_layers"],
      decoder_num_heads=hf["decoder_num_attention_heads"],
      decoder_mlp_dim=hf["decoder_intermediate_size"],
      mask_ratio=hf["mask_ratio"], norm_pix_loss=hf["norm_pix_loss"],
      layer_norm_eps=hf["layer_norm_eps"])


def _to_hf_config(model_config: ml_collections.ConfigDict) -> dict:
  return dict(
      architectures=["ViTMAEForPreTraining"], model_type="vit_mae",
      hidden_size=model_config.width,
      num_hidden_layers=model_config.depth,
      num_attention_heads=model_config.num_heads,
      intermediate_size=model_config.mlp_dim, hidden_act="gelu",
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
      initializer_range=0.02, layer_norm_eps=model_config.layer_norm_eps,
      image_size=model_config.image_size, patch_size=model_config.patch_size,
      num_channels=3, qkv_bias=True,
      decoder_hidden_size=model_config.decoder_width,
      decoder_num_hidden_layers=model_config.decoder_depth,
      decoder_num_attention_heads=model_config.decoder_num_heads,
      decoder_intermediate_size=model_config.decoder_mlp_dim,
      mask_ratio=model_config.mask_ratio,
      norm_pix_loss=model_config.norm_pix_loss)


# ----------------------------------------------------------------- checks


def _flatten(tree, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f"{prefix}{key}/"))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _unflatten(flat: dict) -> dict:
  tree = {}
  for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return tree


def expected_shapes(model_config: ml_collections.ConfigDict
                    ) -> dict[str, tuple]:
  """'encoder/cls_token' -> shape, for every parameter of the model that
  `model_config` describes (traced, nothing computed)."""
  size = model_config.image_size
  inputs = [jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)]
  if mode_of(model_config) == "finetune":
    model = models.build_classifier(model_config)
  else:
    model = models.build(model_config)
    num_patches = patches.grid_size(size, model_config.patch_size) ** 2
    inputs.append(jax.ShapeDtypeStruct((1, num_patches), jnp.float32))
  variables = jax.eval_shape(
      functools.partial(model.init, jax.random.key(0)), *inputs)
  return {k: tuple(v.shape) for k, v in _flatten(variables["params"]).items()}


def _fixed_table(width: int, grid: int, order: str = "w_first"
                 ) -> np.ndarray:
  """The sin-cos table as the reference stores it: (1, 1 + L, D), cls row 0."""
  table = vit.sincos_pos_embed_2d(width, grid, grid, order)
  return np.concatenate([np.zeros((1, width), np.float32), table])[None]


def _listing(names, limit: int = 30) -> str:
  """'(n): a.2.b, a.10.b, ...' with block numbers in numeric order."""
  ordered = sorted(names, key=lambda name: [
      (0, int(part), "") if part.isdigit() else (1, 0, part)
      for part in name.split(".")])
  more = ", ..." if len(ordered) > limit else ""
  return f"({len(ordered)}): {', '.join(ordered[:limit])}{more}"


def _convert(state: dict[str, np.ndarray], rules: list[_Rule],
             expected: dict[str, tuple], fixed: dict[str, np.ndarray],
             ignored: set[str], source: str,
             display: dict[str, str] | None = None) -> dict:
  """Checkpoint tensors -> our nested parameters, or an error that lists
  every missing, unknown or misshapen tensor."""
  display = display or {}
  wanted = {key for rule in rules for key in rule.theirs} | set(fixed)
  missing = wanted - set(state)
  unknown = {display.get(k, k) for k in set(state) - wanted - ignored}
  if missing or unknown:
    raise ValueError(
        f"{source} does not fit the model:"
        + (f"\n  missing {_listing(missing)}" if missing else "")
        + (f"\n  unknown {_listing(unknown)}" if unknown else "")
        + "\nIs it the kind of checkpoint, and the model, it is loaded as?")
  flat, problems = {}, []
  for rule in rules:
    arrays = [state[key] for key in rule.theirs]
    described = ", ".join(f"{display.get(k, k)} {tuple(a.shape)}"
                          for k, a in zip(rule.theirs, arrays))
    try:
      value = np.asarray(rule.to_ours(*arrays), np.float32)
      got = value.shape
    except ValueError:  # tensors that do not even combine
      value, got = None, "(no shape)"
    if got != expected[rule.ours]:
      problems.append(f"{described} -> {rule.ours} {got}; the model config "
                      f"needs {expected[rule.ours]}")
    flat[rule.ours] = value
  for key, table in fixed.items():
    if state[key].shape != table.shape:
      problems.append(f"{display.get(key, key)} {state[key].shape}; the model "
                      f"config needs {table.shape}")
  if problems:
    raise ValueError(f"{source}: tensors whose shapes do not fit the model "
                     "config:\n  " + "\n  ".join(problems[:30]))
  for key, table in fixed.items():
    error = float(np.abs(state[key] - table).max())
    if error > POS_EMBED_ATOL:
      raise ValueError(
          f"{source}: {display.get(key, key)} is not the fixed 2-D sin-cos "
          f"position embedding (max |difference| {error:.3g}"
          + (", all zeros: a model that was never initialised or trained? "
             "transformers >= 5 leaves these tables zero in a freshly "
             "constructed ViTMAE; copy the sin-cos table in before saving"
             if not state[key].any() else "")
          + "). mae_jax's models use exactly that table, so these weights "
          "would not compute what they were trained to.")
  return _unflatten(flat)


# ------------------------------------------------------------- public API


def load_hf_vitmae(path: str) -> tuple[ml_collections.ConfigDict, dict]:
  """A HuggingFace ViTMAE directory (or a weights file in one) ->
  (model config read from its config.json, parameters).

  `ViTMAEForPreTraining` gives the whole MAE; a `ViTMAEModel` (encoder
  alone) gives parameters with only 'encoder'.
  """
  directory = epath.Path(path)
  if not directory.is_dir():
    directory = directory.parent
  if not (directory / "config.json").exists():
    raise FileNotFoundError(f"no config.json in {directory}: a HuggingFace "
                            "model directory has one next to its weights")
  model_config = _from_hf_config(
      json.loads((directory / "config.json").read_text()), directory)
  state, original = _hub_names(_read_hf_weights(directory))
  decoder = "decoder.decoder_embed.weight" in state
  grid = patches.grid_size(model_config.image_size, model_config.patch_size)
  fixed = {"vit.embeddings.position_embeddings":
           _fixed_table(model_config.width, grid)}
  if decoder:
    fixed["decoder.decoder_pos_embed"] = _fixed_table(
        model_config.decoder_width, grid)
  shapes = expected_shapes(model_config)
  params = _convert(state, _hf_rules(model_config, decoder=decoder), shapes,
                    fixed, ignored=set(), source=str(directory),
                    display=original)
  logging.info("Loaded %s (%s)", directory,
               "MAE" if decoder else "encoder only")
  return model_config, params


def load_official_mae(path: str, model_name: str | None = None,
                      **overrides) -> tuple[ml_collections.ConfigDict, dict]:
  """An official MAE `.pth` -> (model config, parameters).

  Args:
    path: a checkpoint of facebookresearch/mae: a pretrained MAE with its
      decoder, a pretrained encoder alone (parameters with only 'encoder'; the
      config's decoder fields are the official decoder's) or a fine-tuned
      classifier (a `build_classifier` config; a linear probe's BatchNorm
      head is folded into the Linear, which is exact at inference).
    model_name: 'base/16', 'large/16', 'huge/14'... The sizes are otherwise
      read from the tensors, and the heads from the standard ViT sizes.
    **overrides: model config fields the weights cannot tell, e.g.
      `norm_pix_loss=True` (default False: the released decoders predict
      raw pixels), `mask_ratio`, `num_heads` for a non-standard width,
      `decoder_num_heads` (16 in every official model).
  """
  return _official_mae(read_torch_file(path), path, model_name, overrides)


def _official_mae(state: dict[str, np.ndarray], path: str,
                  model_name: str | None, overrides: dict
                  ) -> tuple[ml_collections.ConfigDict, dict]:
  if any(k.startswith(("vit.", "embeddings.")) for k in state):
    raise ValueError(f"{path} is a HuggingFace ViTMAE checkpoint: load its "
                     "directory with load_hf_vitmae")
  for key in ("cls_token", "patch_embed.proj.weight"):
    if key not in state:
      raise ValueError(f"{path} has no {key!r}: not a checkpoint of the "
                       f"official MAE code (its keys: {sorted(state)[:10]}...)")
  decoder = "decoder_embed.weight" in state
  probe = "head.1.weight" in state
  classifier = probe or "head.weight" in state
  model_config = _official_config(state, model_name, decoder, classifier,
                                  overrides, path)
  grid = patches.grid_size(model_config.image_size, model_config.patch_size)
  if classifier:
    final_norm = model_config.pooling == "cls"
  else:  # optional in an encoder alone: fine-tuning with gap drops it
    final_norm = decoder or "norm.weight" in state
  rules = _official_rules(model_config, decoder=decoder, final_norm=final_norm)
  fixed, ignored = {}, set()
  if classifier:
    rules.append(_copy("encoder/pos_embed", "pos_embed"))
    if model_config.pooling == "gap":
      rules += _norm("fc_norm", "fc_norm")
    if probe:
      rules += _folded_probe_head()
      ignored.add("head.0.num_batches_tracked")
    else:
      rules += _linear("head", "head")
  else:
    fixed["pos_embed"] = _fixed_table(model_config.width, grid)
    if decoder:
      fixed["decoder_pos_embed"] = _fixed_table(model_config.decoder_width,
                                                grid)
  shapes = expected_shapes(model_config)
  params = _convert(state, rules, shapes, fixed, ignored, source=str(path))
  logging.info("Loaded %s (%s)", path, "classifier" if classifier else
               "MAE" if decoder else "encoder only")
  return model_config, params


def load_official_cae(path: str, model_name: str | None = None,
                      **overrides) -> tuple[ml_collections.ConfigDict, dict]:
  """An official CAE `.pth` -> (CAE model config, parameters with only
  'encoder'), what `config.init_from` takes.

  Args:
    path: a checkpoint of Atten4Vis/CAE: a pretrained CAE ({'model': state
      dict} with 'encoder.*' next to 'alignment_encoder.*', 'regresser.*',
      'decoder.*', which are dropped) or its encoder alone (the same names
      without 'encoder.').
    model_name: 'base/16', 'large/16'...; otherwise read from the tensors.
    **overrides: model config fields, as in `load_official_mae`.

  The config holds the encoder options the weights need (layer scale if
  they have it, q and v biases, the h-first sin-cos table, which is
  checked) and the official recipe for the rest (layer scale init 0.1,
  1e-5 for ViT-L).
  """
  return _official_cae(read_torch_file(path), path, model_name, overrides)


def _is_cae(state: dict[str, np.ndarray]) -> bool:
  """BEiT-style blocks (separate q and v biases): a CAE checkpoint."""
  return any(k.endswith(".attn.q_bias") for k in state)


def _official_cae(state: dict[str, np.ndarray], path: str,
                  model_name: str | None, overrides: dict
                  ) -> tuple[ml_collections.ConfigDict, dict]:
  display = {}
  if "encoder.cls_token" in state:  # a whole CAE: its encoder alone
    dropped = sorted({k.split(".")[0] for k in state
                      if not k.startswith("encoder.")})
    logging.info("Keeping the encoder of %s; dropping %s", path, dropped)
    state = {k[len("encoder."):]: v for k, v in state.items()
             if k.startswith("encoder.")}
    display = {k: f"encoder.{k}" for k in state}
  for key in ("cls_token", "patch_embed.proj.weight", "blocks.0.attn.q_bias"):
    if key not in state:
      raise ValueError(f"{path} has no {key!r}: not an encoder of the "
                       f"official CAE code (its keys: {sorted(state)[:10]}"
                       "...)")
  sizes = _official_sizes(state, model_name, overrides, path)
  layer_scale = "blocks.0.gamma_1" in state
  large = (sizes["width"], sizes["depth"]) == models.VIT_SIZES["large"][:2]
  model_config = _override(cae_config(
      **sizes, layer_scale_init=(1e-5 if large else 0.1) if layer_scale
      else 0.0), overrides)
  rules = [_copy("encoder/cls_token", "cls_token"),
           *_patch_embed("encoder/patch_embed", "patch_embed.proj")]
  for i in range(model_config.depth):
    rules += _cae_block(f"encoder/transformer/blocks_{i}", f"blocks.{i}",
                        layer_scale)
  rules += _norm("encoder/transformer/norm", "norm")
  grid = patches.grid_size(model_config.image_size, model_config.patch_size)
  fixed = ({"pos_embed": _fixed_table(model_config.width, grid, "h_first")}
           if "pos_embed" in state else {})
  # The encoder's parameters are those of a classifier with its options.
  encoder_config = classifier_config(**sizes, num_classes=1, pooling="cls")
  encoder_config.update(
      learned_pos_embed=False, layer_scale_init=model_config.layer_scale_init,
      key_bias=False, sincos_order=model_config.sincos_order)
  params = _convert(state, rules, expected_shapes(encoder_config), fixed,
                    ignored=set(), source=str(path), display=display)
  logging.info("Loaded %s (CAE encoder)", path)
  return model_config, params


def _count_blocks(state: dict, prefix: str) -> int:
  pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
  indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
  return max(indices) + 1 if indices else 0


def _official_sizes(state, model_name, overrides, path) -> dict:
  """The encoder fields of an official checkpoint (MAE's or CAE's names,
  without prefix): sizes from `model_name` or the tensors, the image size
  from the position table."""
  patch_size = state["patch_embed.proj.weight"].shape[-1]
  if model_name is not None:
    # The reference's own names ('mae_vit_large_patch16', 'vit_huge_patch14')
    # or ours ('large/16').
    official = re.fullmatch(r"(?:mae_)?vit_([a-z]+)_patch(\d+)(?:_\w+)?",
                            model_name)
    if official:
      model_name = f"{official.group(1)}/{official.group(2)}"
    sizes = models.encoder_size(model_name)
  else:
    width, depth = state["cls_token"].shape[-1], _count_blocks(state, "blocks")
    standard = {(w, d): h for w, d, h in models.VIT_SIZES.values()}
    heads = overrides.get("num_heads", standard.get((width, depth)))
    if heads is None:
      raise ValueError(
          f"{path}: a ViT of width {width} and depth {depth} is not one of "
          f"the standard sizes {sorted(models.VIT_SIZES)}; give model_name "
          "(e.g. 'base/16') or num_heads")
    sizes = dict(patch_size=patch_size, width=width, depth=depth,
                 num_heads=heads, mlp_dim=4 * width)
    if "blocks.0.mlp.fc1.weight" in state:
      sizes["mlp_dim"] = state["blocks.0.mlp.fc1.weight"].shape[0]
  # Images of the size the position embedding was made for.
  tokens = state["pos_embed"].shape[1] - 1 if "pos_embed" in state else 196
  grid = math.isqrt(tokens)
  if grid * grid != tokens:
    raise ValueError(f"{path}: pos_embed has {tokens} patch positions, not a "
                     "square grid")
  return dict(image_size=grid * sizes["patch_size"], **sizes)


def _official_config(state, model_name, decoder, classifier, overrides, path):
  """The model config of an official MAE checkpoint: sizes from
  `model_name` or the tensors, the rest from the official recipe and
  `overrides`."""
  sizes = _official_sizes(state, model_name, overrides, path)
  if classifier:
    head = state.get("head.weight", state.get("head.1.weight"))
    model_config = classifier_config(
        **sizes, num_classes=head.shape[0],
        pooling="gap" if "fc_norm.weight" in state else "cls")
  else:
    decoder_width = (state["decoder_embed.weight"].shape[0] if decoder
                     else 512)
    model_config = mae_config(
        **sizes, decoder_width=decoder_width,
        decoder_depth=(_count_blocks(state, "decoder_blocks") if decoder
                       else 8),
        decoder_num_heads=OFFICIAL_DECODER_HEADS,
        decoder_mlp_dim=(state["decoder_blocks.0.mlp.fc1.weight"].shape[0]
                         if "decoder_blocks.0.mlp.fc1.weight" in state
                         else 4 * decoder_width))
  return _override(model_config, overrides)


def save_hf_vitmae(model_config: ml_collections.ConfigDict, params,
                   out_dir: str):
  """Writes an MAE (encoder + decoder) as a HuggingFace ViTMAE directory
  (config.json + model.safetensors, the Hub's tensor names) that
  `transformers.ViTMAEForPreTraining.from_pretrained` loads."""
  if mode_of(model_config) != "pretrain" or "decoder" not in params:
    raise ValueError("save_hf_vitmae writes a pretraining MAE with its "
                     "decoder; this is a classifier or an encoder alone")
  if models.method_of(model_config) != "mae":
    raise ValueError(f"save_hf_vitmae writes an MAE; this is a "
                     f"{models.method_of(model_config).upper()}, which "
                     "HuggingFace's ViTMAE cannot hold (a regressor, a "
                     "decoder of the masked patches only)")
  if model_config.loss_on_all_patches:
    logging.warning("HuggingFace's ViTMAE has no loss_on_all_patches: its loss "
                    "averages over the masked patches; the weights are the "
                    "same")
  flat = {k: np.asarray(v, np.float32) for k, v in _flatten(params).items()}
  shapes = expected_shapes(model_config)
  problems = [f"{k}: {flat[k].shape if k in flat else 'missing'}, the model "
              f"config needs {shape}" for k, shape in shapes.items()
              if k not in flat or flat[k].shape != shape]
  problems += [f"{k}: not a parameter of the model" for k in flat
               if k not in shapes]
  if problems:
    raise ValueError("the parameters do not fit the model config:\n  "
                     + "\n  ".join(problems[:30]))
  state = {}
  for rule in _hf_rules(model_config, decoder=True):
    state.update(zip(rule.theirs, rule.to_theirs(flat[rule.ours])))
  grid = patches.grid_size(model_config.image_size, model_config.patch_size)
  state["vit.embeddings.position_embeddings"] = _fixed_table(
      model_config.width, grid)
  state["decoder.decoder_pos_embed"] = _fixed_table(model_config.decoder_width,
                                                    grid)
  state = {k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "config.json").write_text(
      json.dumps(_to_hf_config(model_config), indent=2) + "\n")
  # transformers refuses safetensors files without a 'format' of its own.
  (out / "model.safetensors").write_bytes(
      safetensors.numpy.save(state, metadata={"format": "pt"}))
  logging.info("Wrote %s", out)


# ------------------------------------------------- the DALL-E tokenizer

# What a pickled DALL-E encoder names besides its modules' classes: how torch
# rebuilds tensors, and the containers and devices in the modules' attributes.
_DALLE_GLOBALS = ("torch._utils._rebuild_tensor_v2",
                  "torch._utils._rebuild_parameter", "torch.device",
                  "collections.OrderedDict", "builtins.set")
# Module classes: dall_e's own and torch's layers (Sequential, ReLU, ...).
_DALLE_MODULE_PREFIXES = ("dall_e.", "torch.nn.modules.")
DALLE_ENCODER_CLASS = "dall_e.encoder.Encoder"


class _PickledModule:
  """Stands in for a module class that a pickle names: it receives the
  pickled attributes and runs none of the class's code."""
  path = ""


@functools.lru_cache(maxsize=None)
def _pickled_class(path: str) -> type:
  return type(path.rsplit(".", 1)[-1], (_PickledModule,), {"path": path})


class _RefusedGlobal(pickle.UnpicklingError):
  """A name outside what a DALL-E encoder pickles."""


class _DalleUnpickler(pickle.Unpickler):
  """Resolves only the names a pickled DALL-E encoder needs.

  The released `encoder.pkl` is a whole pickled module (torch.save(model)),
  and unpickling may call whatever the file names. torch's own safe loader
  (weights_only) can allowlist classes, but refuses whole modules saved in
  torch's legacy format (the default before torch 1.6), which the release
  may use. This unpickler reads both formats and resolves module classes to
  inert `_PickledModule`s, so no code of the file's, of dall_e's or of
  torch.nn's runs (nor need dall_e be installed); any other name is refused
  by name.
  """

  def find_class(self, module: str, name: str):
    module = {"__builtin__": "builtins"}.get(module, module)  # protocol 2
    path = f"{module}.{name}"
    if path.startswith(_DALLE_MODULE_PREFIXES):
      return _pickled_class(path)
    if path in _DALLE_GLOBALS:
      return super().find_class(module, name)
    raise _RefusedGlobal(path)


def _module_state(module: _PickledModule, prefix: str = "") -> dict:
  """A pickled module's state dict, under torch's names."""
  attributes = vars(module)
  state = {f"{prefix}{name}": tensor for name, tensor in
           {**attributes.get("_parameters", {}),
            **attributes.get("_buffers", {})}.items() if tensor is not None}
  for name, child in attributes.get("_modules", {}).items():
    if child is not None:
      state.update(_module_state(child, f"{prefix}{name}."))
  return state


def read_dalle_encoder(path: str) -> dict[str, np.ndarray]:
  """The state dict of a `torch.save`d DALL-E `Encoder` (or of its state
  dict) as float32 arrays, without running code from the file."""
  torch = _import_torch(path)
  restricted = types.SimpleNamespace(
      __name__="mae_jax.convert._DalleUnpickler", Unpickler=_DalleUnpickler,
      load=lambda f, **kwargs: _DalleUnpickler(f, **kwargs).load())
  try:
    # weights_only=False is what lets a pickle_module be given; the safety
    # comes from _DalleUnpickler, which resolves every name the file uses.
    # The legacy format stores each module class's source, to compare with
    # the class's; the stand-ins have none, and torch warns of it.
    with epath.Path(path).open("rb") as f, warnings.catch_warnings():
      warnings.filterwarnings("ignore", "Couldn't retrieve source code")
      loaded = torch.load(f, map_location="cpu", pickle_module=restricted,
                          weights_only=False)
  except _RefusedGlobal as error:
    raise ValueError(f"{path} pickles {error}, which a DALL-E encoder does "
                     "not need, and convert loads nothing else: is it the "
                     "released encoder.pkl?") from None
  except Exception as error:  # pylint: disable=broad-except
    raise ValueError(f"{path} cannot be read as a file of torch.save "
                     f"({type(error).__name__}: {error})") from None
  if isinstance(loaded, _PickledModule):
    if loaded.path != DALLE_ENCODER_CLASS:
      raise ValueError(f"{path} holds a pickled {loaded.path}, not a DALL-E "
                       f"encoder ({DALLE_ENCODER_CLASS}): use encoder.pkl")
    loaded = _module_state(loaded)
  if not isinstance(loaded, Mapping):
    raise ValueError(f"{path} holds a {type(loaded).__name__}, not a DALL-E "
                     f"encoder ({DALLE_ENCODER_CLASS}) or its state dict")
  return {k: v.detach().float().numpy() for k, v in loaded.items()
          if torch.is_tensor(v)}


def _conv(ours: str, theirs: str) -> list[_Rule]:
  """dall_e's Conv2d: weight (out, in, kh, kw) <-> kernel (kh, kw, in, out)."""
  return [_Rule(f"{ours}/kernel", (f"{theirs}.w",),
                lambda w: w.transpose(2, 3, 1, 0),
                lambda k: (k.transpose(3, 2, 0, 1),)),
          _copy(f"{ours}/bias", f"{theirs}.b")]


def _dalle_rules(blocks_per_group: int) -> list[_Rule]:
  """Every convolution of models/dalle.py's DalleEncoder <- dall_e's
  Encoder: the same path, less the Sequential 'blocks.' and 'res_path.'."""
  rules = _conv("input", "blocks.input")
  for g in range(1, dalle.GROUP_COUNT + 1):
    for b in range(1, blocks_per_group + 1):
      ours, theirs = f"group_{g}/block_{b}", f"blocks.group_{g}.block_{b}"
      if g > 1 and b == 1:  # the width doubles: a 1x1 conv on the skip
        rules += _conv(f"{ours}/id_path", f"{theirs}.id_path")
      for i in range(1, 5):
        rules += _conv(f"{ours}/conv_{i}", f"{theirs}.res_path.conv_{i}")
  return rules + _conv("output", "blocks.output.conv")


def _dalle_sizes(state: dict[str, np.ndarray], path: str) -> dict:
  """The encoder's sizes (models/dalle.encoder_config), from its tensors."""
  for key in ("blocks.input.w", "blocks.output.conv.w"):
    if key not in state:
      raise ValueError(f"{path} has no {key!r}: not a DALL-E encoder (its "
                       f"tensors {_listing(state, limit=5)})")
  channels = state["blocks.input.w"].shape[1]
  groups = {int(m.group(1)) for k in state
            if (m := re.match(r"blocks\.group_(\d+)\.", k))}
  if channels != 3 or groups != set(range(1, dalle.GROUP_COUNT + 1)):
    raise ValueError(f"{path}: an encoder of {channels} input channels and "
                     f"groups {sorted(groups)}; the released one (and "
                     f"models/dalle.py) has 3 and {dalle.GROUP_COUNT}")
  blocks = {int(m.group(1)) for k in state
            if (m := re.match(r"blocks\.group_1\.block_(\d+)\.", k))}
  return dict(hidden_width=state["blocks.input.w"].shape[0],
              blocks_per_group=max(blocks, default=0),
              vocab_size=state["blocks.output.conv.w"].shape[0])


def load_dalle_encoder(path: str) -> tuple[ml_collections.ConfigDict, dict]:
  """DALL-E's `encoder.pkl` -> (config with `mode` = dalle.TOKENIZER_MODE and
  the encoder's sizes, parameters of models/dalle.py's DalleEncoder)."""
  state = read_dalle_encoder(path)
  sizes = _dalle_sizes(state, path)
  params = _convert(state, _dalle_rules(sizes["blocks_per_group"]),
                    dalle.expected_shapes(**sizes), fixed={}, ignored=set(),
                    source=str(path))
  logging.info("Loaded %s (DALL-E encoder, %s)", path, sizes)
  return dalle.encoder_config(**sizes), params


def load(path: str, model_name: str | None = None, **overrides
         ) -> tuple[ml_collections.ConfigDict, dict]:
  """Any checkpoint -> (config with `model` and `mode`, parameters).

  `path` is a checkpoint of ours (a workdir, its checkpoints/ or a step
  directory), a HuggingFace ViTMAE directory, an official `.pth` of MAE or
  CAE (told apart by CAE's q_bias tensors) or DALL-E's `encoder.pkl`
  (`load_dalle_encoder`); `model_name` and `overrides` are as in
  `load_official_mae` (overrides apply to the model config of any of them).
  """
  p = epath.Path(path)
  if not p.exists():
    raise FileNotFoundError(
        f"{path} does not exist. A model on the HuggingFace Hub must be "
        "downloaded first, e.g. `huggingface-cli download "
        "facebook/vit-mae-base --local-dir DIR`, then --src=DIR.")
  if p.suffix == ".pkl":
    if model_name or overrides:
      raise ValueError(f"{path} is read as a DALL-E encoder, whose sizes its "
                       "tensors give: drop --model and --norm_pix_loss "
                       "(model_name and overrides)")
    return load_dalle_encoder(path)
  if p.is_dir() and not (p / "config.json").exists():
    config, params = checkpointing.load_params(path)
    _override(config.model, overrides)
    return config, params
  if p.is_dir() or p.suffix in (".safetensors", ".bin"):
    model_config, params = load_hf_vitmae(path)
    model_config = _override(model_config, overrides)
  else:
    state = read_torch_file(path)
    official = _official_cae if _is_cae(state) else _official_mae
    model_config, params = official(state, path, model_name, overrides)
  return ml_collections.ConfigDict(dict(model=model_config,
                                        mode=mode_of(model_config))), params


# ------------------------------------------------------------ command line


def add_model_arguments(parser: argparse.ArgumentParser):
  """--model and --norm_pix_loss: what a checkpoint may not say itself
  (shared by this CLI and mae_jax.visualize's)."""
  parser.add_argument("--model", default=None,
                      help="official .pth only: 'base/16', 'large/16', "
                      "'huge/14' (default: read from the tensors)")
  parser.add_argument("--norm_pix_loss", action=argparse.BooleanOptionalAction,
                      default=None,
                      help="what the decoder predicts, when the checkpoint "
                      "does not say (official .pth: raw pixels by default)")


def load_from_arguments(src: str, args: argparse.Namespace):
  """`load(src)` with the overrides of `add_model_arguments`."""
  overrides = ({} if args.norm_pix_loss is None
               else {"norm_pix_loss": args.norm_pix_loss})
  return load(src, args.model, **overrides)


def main(argv: list[str] | None = None):
  parser = cli.ArgumentParser(
      prog="python -m mae_jax.convert",
      description="Converts official MAE and CAE (.pth) and HuggingFace "
      "ViTMAE weights to a checkpoint of ours (what config.init_from takes), "
      "or MAEs to a HuggingFace ViTMAE directory; and DALL-E's encoder.pkl "
      "to the tokenizer parameters of CAE's target=dalle.")
  parser.add_argument("--src", required=True,
                      help="an official MAE or CAE .pth, a HuggingFace "
                      "ViTMAE directory, a checkpoint of ours or DALL-E's "
                      "encoder.pkl")
  parser.add_argument("--dst", required=True, help="the directory to write")
  parser.add_argument("--format", choices=("mae_jax", "hf"), default="mae_jax",
                      help="mae_jax: DST/checkpoints/0 (orbax, our layout); "
                      "hf: config.json + model.safetensors")
  parser.add_argument("--overwrite", action="store_true",
                      help="write into a --dst that is not empty, replacing "
                      "its checkpoints/ (mae_jax) or config.json and "
                      "model.safetensors (hf)")
  add_model_arguments(parser)
  args = parser.parse_args(argv)
  dst = epath.Path(args.dst)
  if dst.exists() and not dst.is_dir():
    parser.error(f"--dst={args.dst} is a file; give a directory")
  if dst.exists() and any(dst.iterdir()) and not args.overwrite:
    parser.error(f"--dst={args.dst} is not empty; give a new directory, or "
                 "--overwrite to replace what it holds")
  config, params = load_from_arguments(args.src, args)
  if args.format == "hf":
    if config.mode == dalle.TOKENIZER_MODE:
      parser.error(f"{args.src} is the DALL-E tokenizer; --format=hf writes "
                   "ViTMAE models only")
    save_hf_vitmae(config.model, params, args.dst)
  else:
    # orbax would keep an existing step 0 and skip the save.
    (dst / "checkpoints").rmtree(missing_ok=True)
    checkpointing.save_params(args.dst, config, params)
  count = sum(np.size(v) for v in jax.tree.leaves(params))
  print(f"{args.src} -> {args.dst} ({args.format}): mode={config.mode}, "
        f"{count:,} parameters in {', '.join(sorted(params))}")


if __name__ == "__main__":
  cli.run(main)
