"""The DALL-E tokenizer (models/dalle.py): numerical parity with the `DALL-E`
package's PyTorch encoder, randomly initialised (issue 9's acceptance test),
the order of the codes, and loading converted parameters.

The parity tests need torch and the DALL-E package (`pip install --no-deps
DALL-E==0.1`); they are skipped, saying so, without them.
"""


import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mae_jax import checkpointing
from mae_jax import convert
from mae_jax.models import dalle

needs_dalle = pytest.mark.needs_modules("torch", "dall_e")

SMALL = dict(hidden_width=64, blocks_per_group=1, vocab_size=512)
FULL = dict(hidden_width=256, blocks_per_group=2, vocab_size=8192)


def _torch_encoder(seed: int, hidden_width: int, blocks_per_group: int,
                  vocab_size: int):
  """dall_e's Encoder with random weights and biases (its init leaves the
  biases zero, which would hide a misplaced one)."""
  import torch  # pylint: disable=g-import-not-at-top
  from dall_e import encoder  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  model = encoder.Encoder(n_hid=hidden_width, n_blk_per_group=blocks_per_group,
                          vocab_size=vocab_size)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith(".b"):
        p.copy_(0.01 * torch.randn(p.shape))
  return model.eval()


def _images(count: int, height: int = 112, width: int = 112, seed: int = 0):
  """Patches of random colours with pixel noise: more varied codes from a
  random encoder than noise alone gives."""
  rng = np.random.RandomState(seed)
  colours = rng.randint(0, 256, (count, height // 16, width // 16, 3))
  pixels = np.kron(colours, np.ones((1, 16, 16, 1))) + rng.randint(
      -16, 17, (count, height, width, 3))
  return np.clip(pixels, 0, 255).astype(np.uint8)


def _torch_logits(model, images: np.ndarray) -> np.ndarray:
  """The reference's preprocessing and forward: ToTensor, map_pixels,
  Encoder; NHWC out."""
  import torch  # pylint: disable=g-import-not-at-top
  from dall_e import utils  # pylint: disable=g-import-not-at-top
  pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).float() / 255
  with torch.no_grad():
    logits = model(utils.map_pixels(pixels))
  return logits.numpy().transpose(0, 2, 3, 1)


def _ours(tmp_path, model):
  """`model` written as the released file is, then converted."""
  import torch  # pylint: disable=g-import-not-at-top
  path = tmp_path / "encoder.pkl"
  torch.save(model, path)
  return convert.load_dalle_encoder(str(path))


@needs_dalle
@pytest.mark.parametrize("sizes,count", [(SMALL, 4), (FULL, 2)],
                         ids=["small", "released_size"])
def test_logits_and_codes_match_the_dall_e_package(tmp_path, sizes, count):
  model = _torch_encoder(0, **sizes)
  config, params = _ours(tmp_path, model)
  assert dict(config.model) == sizes
  images = _images(count)
  theirs = _torch_logits(model, images)
  pixels = dalle.map_pixels(jnp.asarray(images, jnp.float32) / 255)
  logits = jax.jit(dalle.DalleEncoder(**sizes).apply)({"params": params},
                                                      pixels)
  assert logits.shape == (count, 14, 14, sizes["vocab_size"])
  scale = np.abs(theirs).max()
  assert np.abs(np.asarray(logits) - theirs).max() <= 1e-4 * scale
  # BEiT/CAE: get_codebook_indices(images).flatten(1).
  expected = theirs.argmax(-1).reshape(count, -1)
  codes = jax.jit(dalle.dalle_codes)(params, images)
  assert codes.dtype == jnp.int32 and codes.shape == (count, 196)
  assert len(np.unique(expected)) >= 10  # not a degenerate comparison
  np.testing.assert_array_equal(codes, expected)


def test_codes_are_row_major_over_the_grid():
  # Random parameters straight from numpy: compiling `init` takes seconds.
  rng = np.random.RandomState(0)
  params = flax.traverse_util.unflatten_dict(
      {name: 0.1 * rng.randn(*shape).astype(np.float32)
       for name, shape in dalle.expected_shapes(**SMALL).items()}, sep="/")
  images = _images(2, height=48, width=32)  # a 6 x 4 grid of codes
  pixels = dalle.map_pixels(jnp.asarray(images, jnp.float32) / 255)
  logits = jax.jit(dalle.DalleEncoder(**SMALL).apply)({"params": params},
                                                      pixels)
  codes = np.asarray(jax.jit(dalle.dalle_codes)(params, images))
  assert codes.shape == (2, 24)
  assert len(np.unique(codes)) >= 8, codes  # an order mistake would show
  for row in range(6):
    for column in range(4):
      np.testing.assert_array_equal(codes[:, row * 4 + column],
                                    np.argmax(logits[:, row, column], -1))


def test_map_pixels_squeezes_into_the_dvae_range():
  np.testing.assert_allclose(dalle.map_pixels(jnp.array([0.0, 0.5, 1.0])),
                             [0.1, 0.5, 0.9], rtol=1e-6)


def test_second_view_of_the_wrong_kind_is_refused():
  params = jax.eval_shape(dalle.DalleEncoder(**SMALL).init, jax.random.key(0),
                          jnp.zeros((1, 16, 16, 3)))["params"]
  with pytest.raises(ValueError, match="dtype float32; .* uint8 pixels"):
    dalle.dalle_codes(params, jnp.zeros((1, 112, 112, 3)))
  with pytest.raises(ValueError, match=r"shape \(1, 100, 100, 3\).*multiples "
                     "of 8"):
    dalle.dalle_codes(params, jnp.zeros((1, 100, 100, 3), jnp.uint8))


def test_missing_tokenizer_says_how_to_convert_it(tmp_path):
  hint = "python -m mae_jax.convert --src=encoder.pkl --dst="
  with pytest.raises(FileNotFoundError, match=hint):
    dalle.load_tokenizer(str(tmp_path / "dalle"))
  with pytest.raises(FileNotFoundError, match=hint):
    dalle.load_tokenizer(str(tmp_path))  # exists, holds no checkpoint


def test_checkpoint_of_another_kind_is_not_taken_for_the_tokenizer(tmp_path):
  config = ml_collections.ConfigDict(dict(mode="pretrain",
                                          model=dict(width=8)))
  checkpointing.save_params(str(tmp_path), config,
                            {"encoder": {"cls_token": np.zeros((1, 1, 8))}})
  with pytest.raises(ValueError, match="holds a pretrain checkpoint, not "
                     "DALL-E tokenizer parameters"):
    dalle.load_tokenizer(str(tmp_path))
