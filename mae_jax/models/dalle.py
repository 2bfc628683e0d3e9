"""The DALL-E dVAE encoder: the visual tokenizer of CAE's `target=dalle`.

CAE (Chen et al., Sec. 3.2 "Targets"), like BEiT, predicts for every masked
patch the discrete token that DALL-E's dVAE (Ramesh et al. 2021) gives it:
the dVAE's *encoder* reads a second, 112x112 view of the same crop (pixels
mapped by `map_pixels`) and returns logits over 8192 codes on a 14x14 grid,
one cell per 16x16 patch of the 224x224 view; the argmax is the target
(Atten4Vis/CAE `furnace/engine_for_pretraining.py`:
`d_vae.get_codebook_indices(images).flatten(1)`).

A port of `dall_e/encoder.py` of the `DALL-E` package (openai/DALL-E), with
its architecture and hyper-parameters: a 7x7 input convolution, four groups
of `blocks_per_group` residual blocks of widths 1, 2, 4, 8 x `hidden_width`,
2x2 max-pools between groups (112 -> 56 -> 28 -> 14), each block
`id_path(x) + post_gain * res_path(x)` with res_path = (ReLU, 3x3 conv to
width/4) x 3, ReLU, 1x1 conv back to width, post_gain = 1 / (number of
blocks)^2, id_path a 1x1 conv where the width changes; then ReLU and a 1x1
convolution to the vocabulary. NHWC inside.

Parameters are named after the package's state dict, kernels (kh, kw, in,
out) where torch stores (out, in, kh, kw):
  input/kernel                      <- blocks.input.w
  group_2/block_1/id_path/kernel    <- blocks.group_2.block_1.id_path.w
  group_1/block_1/conv_1/kernel     <- blocks.group_1.block_1.res_path.conv_1.w
  output/kernel                     <- blocks.output.conv.w
(`mae_jax.convert` holds the full correspondence and reads the released
`encoder.pkl`.)
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from etils import epath

from mae_jax import checkpointing

# dall_e/utils.py's `logit_laplace_eps`: the dVAE was trained on pixels
# squeezed into [eps, 1 - eps].
LOGIT_LAPLACE_EPS = 0.1
# A class attribute of dall_e's Encoder, not one of its arguments.
GROUP_COUNT = 4
# Each group but the last halves the resolution: 8 input pixels per code.
DOWNSAMPLING = 2 ** (GROUP_COUNT - 1)
# `mode` of the converted checkpoint's stored config: what marks it as
# tokenizer parameters (it has no model that `config.init_from` could take).
TOKENIZER_MODE = "dalle_tokenizer"
CONVERT_HINT = ("convert the released encoder with `python -m mae_jax.convert "
                "--src=encoder.pkl --dst=DIR` (encoder.pkl from "
                "https://cdn.openai.com/dall-e/encoder.pkl) and point the "
                "config at DIR")

# torch's Conv2d init in dall_e/utils.py: N(0, 1 / fan_in), zero bias.
conv_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")


def map_pixels(x: jnp.ndarray) -> jnp.ndarray:
  """Pixels in [0, 1] -> [eps, 1 - eps], the dVAE's input range
  (dall_e/utils.py `map_pixels`)."""
  return (1 - 2 * LOGIT_LAPLACE_EPS) * x + LOGIT_LAPLACE_EPS


def _conv(features: int, size: int, name: str) -> nn.Conv:
  """dall_e's Conv2d: odd square kernel, 'same' padding, bias.

  float32 products on every backend (XLA's default precision would use
  bfloat16 passes on TPUs and TF32 on recent GPUs): the targets are argmaxes,
  and near-ties flip with the arithmetic.
  """
  return nn.Conv(features, (size, size), padding=(size - 1) // 2,
                 precision=jax.lax.Precision.HIGHEST, kernel_init=conv_init,
                 name=name)


class EncoderBlock(nn.Module):
  """x -> id_path(x) + post_gain * res_path(x), at `features` channels."""
  features: int
  post_gain: float

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    hidden = self.features // 4
    identity = (x if x.shape[-1] == self.features
                else _conv(self.features, 1, "id_path")(x))
    h = x
    for i, (width, size) in enumerate(
        [(hidden, 3), (hidden, 3), (hidden, 3), (self.features, 1)], 1):
      h = _conv(width, size, f"conv_{i}")(nn.relu(h))
    return identity + self.post_gain * h


class EncoderGroup(nn.Module):
  """`num_blocks` blocks at one resolution, then a 2x2 max-pool if `pool`."""
  features: int
  num_blocks: int
  post_gain: float
  pool: bool

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    for i in range(1, self.num_blocks + 1):
      x = EncoderBlock(self.features, self.post_gain, name=f"block_{i}")(x)
    return nn.max_pool(x, (2, 2), strides=(2, 2)) if self.pool else x


class DalleEncoder(nn.Module):
  """The dVAE encoder: (B, H, W, 3) mapped pixels -> (B, H/8, W/8, vocab)
  logits. Defaults are those of the released encoder.

  float32 only. The reference computes all but the output convolution in
  float16 on CUDA. Through the randomly initialised full-size encoder, on 4
  random 112x112 images, that (emulated with torch on a CPU) changed 0.13% of
  the codes of its float32 run, and bfloat16 convolutions here changed 0.8%
  of ours: neither keeps the codes.
  """
  hidden_width: int = 256
  blocks_per_group: int = 2
  vocab_size: int = 8192

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    post_gain = 1 / (GROUP_COUNT * self.blocks_per_group) ** 2
    x = _conv(self.hidden_width, 7, "input")(x)
    for g in range(1, GROUP_COUNT + 1):
      x = EncoderGroup(self.hidden_width * 2 ** (g - 1), self.blocks_per_group,
                       post_gain, pool=g < GROUP_COUNT, name=f"group_{g}")(x)
    return _conv(self.vocab_size, 1, "output")(nn.relu(x))


def encoder_config(hidden_width: int = 256, blocks_per_group: int = 2,
                   vocab_size: int = 8192) -> ml_collections.ConfigDict:
  """The stored config of converted tokenizer parameters: its `mode` says
  what they are, `model` the encoder's sizes."""
  return ml_collections.ConfigDict(dict(
      mode=TOKENIZER_MODE,
      model=dict(hidden_width=hidden_width, blocks_per_group=blocks_per_group,
                 vocab_size=vocab_size)))


def _sizes(params) -> dict:
  """The encoder's sizes, read from its parameters' shapes."""
  return dict(
      hidden_width=params["input"]["kernel"].shape[-1],
      blocks_per_group=sum(name.startswith("block_")
                           for name in params["group_1"]),
      vocab_size=params["output"]["kernel"].shape[-1])


def expected_shapes(hidden_width: int = 256, blocks_per_group: int = 2,
                    vocab_size: int = 8192) -> dict[str, tuple]:
  """'group_1/block_1/conv_1/kernel' -> shape, for every parameter of the
  encoder of these sizes (traced, nothing computed)."""
  encoder = DalleEncoder(hidden_width, blocks_per_group, vocab_size)
  variables = jax.eval_shape(
      functools.partial(encoder.init, jax.random.key(0)),
      jax.ShapeDtypeStruct((1, DOWNSAMPLING, DOWNSAMPLING, 3), jnp.float32))
  flat = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
  return {"/".join(k.key for k in path): tuple(leaf.shape)
          for path, leaf in flat}


def dalle_codes(params, second_view: jnp.ndarray) -> jnp.ndarray:
  """CAE's targets: (B, H, W, 3) uint8 second view -> (B, H/8 * W/8) int32.

  The codes are in row-major order of their (H/8, W/8) grid, the order of
  the patches of the main view (112x112 -> 196 codes for the 14x14 patches
  of 224/16). Pixels are scaled to [0, 1] (torchvision's ToTensor) and
  mapped with `map_pixels`. The tokenizer is fixed: no gradient reaches its
  parameters. Meant to run inside the compiled step.
  """
  if second_view.dtype != jnp.uint8:
    raise ValueError(f"second_view has dtype {second_view.dtype}; the DALL-E "
                     "tokenizer takes the uint8 pixels of the input pipeline")
  if (second_view.ndim != 4 or second_view.shape[-1] != 3
      or second_view.shape[1] % DOWNSAMPLING
      or second_view.shape[2] % DOWNSAMPLING):
    raise ValueError(
        f"second_view has shape {second_view.shape}; the DALL-E tokenizer "
        f"takes (B, H, W, 3) RGB images with H and W multiples of "
        f"{DOWNSAMPLING} (112x112 for 224x224 images of 16x16 patches)")
  encoder = DalleEncoder(**_sizes(params))
  pixels = map_pixels(second_view.astype(jnp.float32) / 255)
  logits = encoder.apply({"params": jax.lax.stop_gradient(params)}, pixels)
  codes = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # (B, H/8, W/8)
  return codes.reshape(codes.shape[0], -1)


def load_tokenizer(path: str) -> dict:
  """The tokenizer parameters that `python -m mae_jax.convert` wrote.

  Raises FileNotFoundError (with how to convert) for a path that holds no
  checkpoint, and ValueError for a checkpoint of something else.
  """
  if not epath.Path(path).exists():
    raise FileNotFoundError(f"no DALL-E tokenizer at {path}: {CONVERT_HINT}")
  try:
    config, params = checkpointing.load_params(path)
  except FileNotFoundError as error:
    raise FileNotFoundError(f"{error}. For the DALL-E tokenizer, "
                            f"{CONVERT_HINT}") from None
  if config.get("mode") != TOKENIZER_MODE:
    raise ValueError(
        f"{path} holds a {config.get('mode', 'model')} checkpoint, not DALL-E "
        f"tokenizer parameters; {CONVERT_HINT}")
  return params

