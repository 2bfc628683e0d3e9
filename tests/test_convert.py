"""Import/export of official MAE and HuggingFace ViTMAE weights, and numerical
parity with the PyTorch models (the acceptance test of issue 4); reading
DALL-E's pickled encoder (issue 9; its parity is in test_dalle.py); the
command line.

The parity tests need torch and transformers (requirements-test.txt), the
DALL-E tests torch and the DALL-E package: without them they are skipped,
saying so, or fail in CI (tests/testing_utils.py's require_modules); the rest
needs none of these.
"""

import argparse
import functools
import json
import os
import subprocess
import sys

import chex
import flax
import jax
import ml_collections
import numpy as np
import pytest
import safetensors.flax
import safetensors.numpy

from configs import common
from mae_jax import checkpointing
from mae_jax import convert
from mae_jax import initialization
from mae_jax import masking
from mae_jax import models
from mae_jax.models import dalle

needs_torch = pytest.mark.needs_modules("torch", "transformers")

# Deliberately not square-number friendly: a 6x6 grid, 9 visible patches,
# an MLP that is not 4x the width, heads of 24 and 16 channels.
SIZES = dict(image_size=48, patch_size=8, width=96, depth=3, num_heads=4,
             mlp_dim=200, decoder_width=64, decoder_depth=2,
             decoder_num_heads=4, decoder_mlp_dim=112)
BATCH = 3
NUM_PATCHES = 36
ATOL = 1e-5


def _small_config(**overrides):
  config = convert.mae_config(**SIZES, norm_pix_loss=False)
  config.dtype = "float32"
  config.update(overrides)
  return config


def _inputs(seed=0):
  """Normalised NHWC images and masking noise, as numpy float32."""
  rng = np.random.RandomState(seed)
  images = rng.randn(BATCH, 48, 48, 3).astype(np.float32)
  return images, rng.rand(BATCH, NUM_PATCHES).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _random_params(seed=0):
  """Parameters of our MAE of `SIZES`, with no parameter left at a trivial
  value (ones, zeros), so that every transpose and permutation shows."""
  images, noise = _inputs()
  params = jax.jit(models.build(_small_config()).init)(
      jax.random.key(seed), images, noise)["params"]
  rng = np.random.RandomState(seed)
  return jax.tree.map(
      lambda x: (x + 0.1 * rng.randn(*x.shape)).astype(np.float32), params)


def _official_sincos(width, grid):
  """util/pos_embed.py's get_2d_sincos_pos_embed(cls_token=True), rewritten
  independently of ours: float32 numpy, meshgrid with w first."""
  omega = 1.0 / 10000 ** (np.arange(width // 4, dtype=np.float32) /
                          np.float32(width / 4))
  coords = np.meshgrid(np.arange(grid, dtype=np.float32),
                       np.arange(grid, dtype=np.float32))

  def embed(pos):
    angles = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  table = np.concatenate([embed(coords[0]), embed(coords[1])], axis=1)
  return np.concatenate([np.zeros((1, width)), table])[None].astype(np.float32)


def test_converted_config_has_every_field_of_the_recipe():
  assert set(convert.mae_config(**SIZES)) == set(common.mae_model("base/16"))
  encoder = {k: SIZES[k] for k in ("image_size", "patch_size", "width",
                                   "depth", "num_heads", "mlp_dim")}
  assert set(convert.cae_config(**encoder, layer_scale_init=0.1)) == set(
      common.cae_model("base/16"))
  classifier = convert.classifier_config(
      image_size=48, patch_size=8, width=96, depth=3, num_heads=4,
      mlp_dim=200, num_classes=5, pooling="gap")
  assert set(classifier) == set(common.classifier_model("base/16"))
  classifier.dtype = "float32"
  assert convert.mode_of(classifier) == "finetune"
  shapes = convert.expected_shapes(classifier)
  assert shapes["encoder/pos_embed"] == (1, 1 + NUM_PATCHES, 96)
  assert shapes["head/kernel"] == (96, 5)


def test_hf_export_and_import_are_exact_without_torch(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails
  config = _small_config(norm_pix_loss=True, mask_ratio=0.6)
  params = _random_params()
  convert.save_hf_vitmae(config, params, str(tmp_path))
  loaded_config, loaded = convert.load_hf_vitmae(str(tmp_path))
  chex.assert_trees_all_equal(loaded, params)
  assert loaded_config.norm_pix_loss and loaded_config.mask_ratio == 0.6
  assert {k: loaded_config[k] for k in SIZES} == SIZES


def _hf_dir(tmp_path, config=None):
  config = config or _small_config()
  convert.save_hf_vitmae(config, _random_params(), str(tmp_path))
  return tmp_path


def _edit_weights(directory, edit):
  path = directory / "model.safetensors"
  state = safetensors.numpy.load_file(str(path))
  edit(state)
  safetensors.numpy.save_file(state, str(path), metadata={"format": "pt"})


def test_missing_and_unknown_tensors_are_listed(tmp_path):
  directory = _hf_dir(tmp_path)

  def edit(state):
    del state["vit.encoder.layer.1.attention.attention.key.bias"]
    state["vit.encoder.layer.3.layernorm_before.weight"] = np.ones(96)

  _edit_weights(directory, edit)
  with pytest.raises(ValueError) as error:
    convert.load_hf_vitmae(str(directory))
  message = str(error.value)
  assert "missing (1): vit.encoder.layer.1.attention.attention.key.bias" in (
      message)
  assert "unknown (1): vit.encoder.layer.3.layernorm_before.weight" in message


def test_shape_mismatch_names_the_tensor(tmp_path):
  directory = _hf_dir(tmp_path)
  hf_config = json.loads((directory / "config.json").read_text())
  hf_config["intermediate_size"] = 256
  (directory / "config.json").write_text(json.dumps(hf_config))
  with pytest.raises(ValueError) as error:
    convert.load_hf_vitmae(str(directory))
  message = str(error.value)
  assert ("vit.encoder.layer.0.intermediate.dense.weight (200, 96) -> "
          "encoder/transformer/blocks_0/mlp/fc1/kernel (96, 200); the model "
          "config needs (96, 256)") in message
  assert "vit.encoder.layer.2.output.dense.weight" in message


def test_position_embedding_other_than_sincos_is_refused(tmp_path):
  directory = _hf_dir(tmp_path)

  def edit(state):
    table = state["decoder.decoder_pos_embed"]
    state["decoder.decoder_pos_embed"] = table[:, :, ::-1].copy()

  _edit_weights(directory, edit)
  with pytest.raises(ValueError, match="decoder.decoder_pos_embed is not the "
                     "fixed 2-D sin-cos position embedding"):
    convert.load_hf_vitmae(str(directory))


def test_our_sincos_table_is_the_official_one():
  for width, grid in ((96, 6), (768, 14), (1280, 16)):
    np.testing.assert_allclose(convert._fixed_table(width, grid),
                               _official_sincos(width, grid), atol=2e-5)


def test_pth_without_torch_asks_for_pip_install_torch(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)
  path = tmp_path / "mae_pretrain_vit_base.pth"
  path.write_bytes(b"not read")
  with pytest.raises(ImportError, match="needs torch: pip install torch"):
    convert.load_official_mae(str(path))


@pytest.mark.needs_modules("torch")
@pytest.mark.parametrize("content", [b"just some text\n",
                                     b"\x80\x04\x95\x05\x00"])
def test_a_file_that_is_no_checkpoint_is_named_without_unsafe_advice(
    tmp_path, content):
  # Today's torch says `KeyError: 101` for a text file, or advises
  # weights_only=False (which runs the file's code) for other pickles.
  path = tmp_path / "weights.pth"
  path.write_bytes(content)
  with pytest.raises(ValueError, match="weights.pth is not a PyTorch "
                     "checkpoint of tensors") as error:
    convert.load(str(path))
  assert "weights_only" not in str(error.value)


@pytest.mark.needs_modules("torch")
def test_the_cli_reports_a_mistake_in_one_line(tmp_path):
  path = tmp_path / "notes.txt"
  path.write_text("hello\n")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
      [sys.executable, "-m", "mae_jax.convert", f"--src={path}",
       f"--dst={tmp_path / 'out'}"], cwd=root, env=dict(
           os.environ, PYTHONPATH=root), capture_output=True, text=True,
      timeout=300, check=False)
  assert result.returncode == 1
  assert (f"mae_jax.convert: error: {path} is not a PyTorch checkpoint"
          in result.stderr), result.stderr[-3000:]
  assert "Traceback" not in result.stderr


def test_a_path_that_does_not_exist_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist.*download"):
    convert.load("facebook/vit-mae-base")


def test_bfloat16_safetensors_are_read_as_float32(tmp_path):
  values = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
  path = tmp_path / "half.safetensors"
  path.write_bytes(safetensors.flax.save(
      {"w": jax.numpy.asarray(values, jax.numpy.bfloat16)}))
  state = convert.read_safetensors(str(path))
  assert state["w"].dtype == np.float32
  np.testing.assert_array_equal(state["w"], values)  # exact in bfloat16


def test_cli_writes_our_checkpoint_and_exports_it_back(tmp_path, capsys):
  config = _small_config(norm_pix_loss=True)
  params = _random_params()
  convert.save_hf_vitmae(config, params, str(tmp_path / "hf"))
  convert.main([f"--src={tmp_path / 'hf'}", f"--dst={tmp_path / 'ours'}"])
  assert "mode=pretrain" in capsys.readouterr().out
  stored_config, stored = checkpointing.load_params(str(tmp_path / "ours"))
  assert stored_config.mode == "pretrain"
  assert stored_config.model.norm_pix_loss
  chex.assert_trees_all_equal(stored, params)
  convert.main([f"--src={tmp_path / 'ours'}", f"--dst={tmp_path / 'back'}",
                "--format=hf"])
  _, back = convert.load_hf_vitmae(str(tmp_path / "back"))
  chex.assert_trees_all_equal(back, stored)


@needs_torch
def test_hf_weights_in_shards_or_in_pytorch_model_bin_load_the_same(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  directory = _hf_dir(tmp_path)
  _, expected = convert.load_hf_vitmae(str(directory))
  state = safetensors.numpy.load_file(str(directory / "model.safetensors"))
  (directory / "model.safetensors").unlink()
  names = sorted(state)
  shards = {"model-1.safetensors": names[::2], "model-2.safetensors":
            names[1::2]}
  for shard, keys in shards.items():
    safetensors.numpy.save_file({k: state[k] for k in keys},
                                str(directory / shard))
  index = directory / "model.safetensors.index.json"
  index.write_text(json.dumps({"weight_map": {
      k: shard for shard, keys in shards.items() for k in keys}}))
  chex.assert_trees_all_equal(convert.load_hf_vitmae(str(directory))[1],
                              expected)
  for path in (index, *(directory / shard for shard in shards)):
    path.unlink()
  torch.save({k: torch.from_numpy(v) for k, v in state.items()},
             str(directory / "pytorch_model.bin"))
  chex.assert_trees_all_equal(convert.load_hf_vitmae(str(directory))[1],
                              expected)


# ------------------------------------------------- parity with PyTorch


def _hf_config(norm_pix_loss):
  import transformers  # pylint: disable=g-import-not-at-top
  return transformers.ViTMAEConfig(
      image_size=48, patch_size=8, hidden_size=96, num_hidden_layers=3,
      num_attention_heads=4, intermediate_size=200, decoder_hidden_size=64,
      decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
      decoder_intermediate_size=112, mask_ratio=0.75,
      norm_pix_loss=norm_pix_loss)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  """A random ViTMAEForPreTraining saved by transformers, with norm_pix_loss
  off and on: {False: dir, True: dir}."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = transformers.ViTMAEForPreTraining(_hf_config(False)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith(("position_embeddings", "decoder_pos_embed")):
        # transformers 5 leaves these zero in a fresh model; a pretrained
        # one holds the official table.
        p.copy_(torch.from_numpy(_official_sincos(p.shape[-1], 6)))
      elif p.dim() >= 2 and "token" not in name:
        p.copy_(torch.randn(p.shape) * p[0].numel() ** -0.5)
      else:  # biases, LayerNorm scales, cls and mask tokens
        p.add_(0.3 * torch.randn(p.shape))
  dirs = {}
  for norm_pix in (False, True):
    model.config.norm_pix_loss = norm_pix
    dirs[norm_pix] = tmp_path_factory.mktemp(f"hf_norm_pix_{norm_pix}")
    model.save_pretrained(str(dirs[norm_pix]))
  return dirs


def _hf_forward(model, images, noise):
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    return model(torch.from_numpy(images.transpose(0, 3, 1, 2)),
                 noise=torch.from_numpy(noise))


def _ours(config, params, images, noise):
  return jax.jit(models.build(config).apply)({"params": params}, images, noise)


def _assert_outputs_match(ours, theirs):
  np.testing.assert_array_equal(np.asarray(ours.mask), theirs.mask.numpy())
  np.testing.assert_allclose(ours.pred, theirs.logits.numpy(), atol=ATOL,
                             rtol=ATOL)
  np.testing.assert_allclose(ours.loss, theirs.loss.item(), atol=ATOL,
                             rtol=ATOL)


@needs_torch
@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_pretraining_matches_hf_vitmae(hf_dirs, norm_pix_loss):
  import transformers  # pylint: disable=g-import-not-at-top
  config, params = convert.load_hf_vitmae(str(hf_dirs[norm_pix_loss]))
  assert config.norm_pix_loss == norm_pix_loss
  assert config.layer_norm_eps == 1e-12  # HuggingFace's, read from the file
  config.dtype = "float32"
  images, noise = _inputs()
  ours = _ours(config, params, images, noise)
  theirs = _hf_forward(transformers.ViTMAEForPreTraining.from_pretrained(
      hf_dirs[norm_pix_loss]).eval(), images, noise)
  assert float(ours.mask.sum()) == BATCH * (NUM_PATCHES - 9)
  _assert_outputs_match(ours, theirs)


@needs_torch
def test_encoder_features_match_hf_vitmae(hf_dirs):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  config, params = convert.load_hf_vitmae(str(hf_dirs[False]))
  config.dtype = "float32"
  images, noise = _inputs(seed=1)
  pixels = torch.from_numpy(images.transpose(0, 3, 1, 2))
  # The masked encoder, as in pretraining: cls + visible tokens.
  latent, _, _ = models.build(config).apply(
      {"params": params}, images, noise, method=lambda m, x, n: m.encode(x, n))
  with torch.no_grad():
    theirs = transformers.ViTMAEModel.from_pretrained(hf_dirs[False]).eval()(
        pixels, noise=torch.from_numpy(noise)).last_hidden_state.numpy()
  np.testing.assert_allclose(latent, theirs, atol=ATOL, rtol=ATOL)
  # Every patch: no masking, and noise that keeps the image order.
  encoder = models.VisionEncoder(config.patch_size, config.width, config.depth,
                                 config.num_heads, config.mlp_dim,
                                 config.layer_norm_eps)
  tokens = encoder.apply({"params": params["encoder"]}, images)
  with torch.no_grad():
    theirs = transformers.ViTMAEModel.from_pretrained(
        hf_dirs[False], mask_ratio=0.0).eval()(
            pixels, noise=torch.arange(NUM_PATCHES, dtype=torch.float32)
            .repeat(BATCH, 1)).last_hidden_state.numpy()
  np.testing.assert_allclose(tokens[:, 0], theirs[:, 0], atol=ATOL, rtol=ATOL)
  np.testing.assert_allclose(tokens[:, 1:].mean(1), theirs[:, 1:].mean(1),
                             atol=ATOL, rtol=ATOL)
  np.testing.assert_allclose(tokens, theirs, atol=ATOL, rtol=ATOL)


@needs_torch
@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_export_loads_in_transformers_and_computes_the_same(tmp_path,
                                                            norm_pix_loss):
  import transformers  # pylint: disable=g-import-not-at-top
  config = _small_config(norm_pix_loss=norm_pix_loss)
  params = _random_params(seed=3)
  convert.save_hf_vitmae(config, params, str(tmp_path))
  model, info = transformers.ViTMAEForPreTraining.from_pretrained(
      tmp_path, output_loading_info=True)
  assert not any(info.values()), info  # no missing or unexpected keys
  images, noise = _inputs(seed=2)
  _assert_outputs_match(_ours(config, params, images, noise),
                        _hf_forward(model.eval(), images, noise))


# ------------------------------------------- official checkpoints (.pth)


def _official_block(layer, prefix):
  """A transformers 5 ViTMAELayer under the names of timm's Block."""
  import torch  # pylint: disable=g-import-not-at-top
  attn = layer.attention
  qkv = (attn.q_proj, attn.k_proj, attn.v_proj)
  return {
      f"{prefix}.norm1.weight": layer.layernorm_before.weight,
      f"{prefix}.norm1.bias": layer.layernorm_before.bias,
      f"{prefix}.attn.qkv.weight": torch.cat([x.weight for x in qkv]),
      f"{prefix}.attn.qkv.bias": torch.cat([x.bias for x in qkv]),
      f"{prefix}.attn.proj.weight": attn.o_proj.weight,
      f"{prefix}.attn.proj.bias": attn.o_proj.bias,
      f"{prefix}.norm2.weight": layer.layernorm_after.weight,
      f"{prefix}.norm2.bias": layer.layernorm_after.bias,
      f"{prefix}.mlp.fc1.weight": layer.mlp.fc1.weight,
      f"{prefix}.mlp.fc1.bias": layer.mlp.fc1.bias,
      f"{prefix}.mlp.fc2.weight": layer.mlp.fc2.weight,
      f"{prefix}.mlp.fc2.bias": layer.mlp.fc2.bias,
  }


def _official_state(hf_dir):
  """The HuggingFace model's weights under models_mae.py's names."""
  import transformers  # pylint: disable=g-import-not-at-top
  model = transformers.ViTMAEForPreTraining.from_pretrained(hf_dir)
  vit, decoder = model.vit, model.decoder
  state = {
      "cls_token": vit.embeddings.cls_token,
      "pos_embed": vit.embeddings.position_embeddings,
      "patch_embed.proj.weight": vit.embeddings.patch_embeddings.projection
      .weight,
      "patch_embed.proj.bias": vit.embeddings.patch_embeddings.projection.bias,
      "norm.weight": vit.layernorm.weight, "norm.bias": vit.layernorm.bias,
      "decoder_embed.weight": decoder.decoder_embed.weight,
      "decoder_embed.bias": decoder.decoder_embed.bias,
      "mask_token": decoder.mask_token,
      "decoder_pos_embed": decoder.decoder_pos_embed,
      "decoder_norm.weight": decoder.decoder_norm.weight,
      "decoder_norm.bias": decoder.decoder_norm.bias,
      "decoder_pred.weight": decoder.decoder_pred.weight,
      "decoder_pred.bias": decoder.decoder_pred.bias,
  }
  for i, layer in enumerate(vit.layers):
    state.update(_official_block(layer, f"blocks.{i}"))
  for i, layer in enumerate(decoder.decoder_layers):
    state.update(_official_block(layer, f"decoder_blocks.{i}"))
  return {k: v.detach().clone() for k, v in state.items()}


def _save_pth(path, state, **extra):
  import torch  # pylint: disable=g-import-not-at-top
  torch.save({"model": state, **extra}, str(path))
  return str(path)


@needs_torch
def test_official_pretraining_checkpoints_load_as_the_same_model(hf_dirs,
                                                                  tmp_path):
  config, hf_params = convert.load_hf_vitmae(str(hf_dirs[False]))
  state = _official_state(hf_dirs[False])
  # A training checkpoint of the official code also holds its arguments.
  path = _save_pth(tmp_path / "checkpoint-799.pth", state, epoch=799,
                   args=argparse.Namespace(model="mae_vit_small"))
  official_config, params = convert.load_official_mae(
      path, num_heads=4, decoder_num_heads=4, norm_pix_loss=True)
  chex.assert_trees_all_equal(params, hf_params)
  assert {k: official_config[k] for k in SIZES} == SIZES
  assert official_config.norm_pix_loss
  assert official_config.layer_norm_eps == 1e-6  # the official models'

  encoder_only = {k: v for k, v in state.items()
                  if not k.startswith(("decoder", "mask_token"))}
  _, params = convert.load_official_mae(
      _save_pth(tmp_path / "encoder.pth", encoder_only), num_heads=4)
  chex.assert_trees_all_equal(params, {"encoder": hf_params["encoder"]})

  with pytest.raises(ValueError, match="not one of the standard sizes"):
    convert.load_official_mae(path)
  with pytest.raises(ValueError) as error:
    convert.load_official_mae(path, "small/8")  # 384 wide, 12 blocks
  assert "missing (108): blocks.3.attn.proj.bias" in str(error.value)


def _torch_official_classifier(state, images, num_heads):
  """models_vit.VisionTransformer (timm 0.3.2 blocks) plus the linear
  probe's BatchNorm head, written out in torch."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch.nn import functional as F  # pylint: disable=g-import-not-at-top
  t = state
  width = t["cls_token"].shape[-1]
  x = F.conv2d(torch.from_numpy(images.transpose(0, 3, 1, 2)),
               t["patch_embed.proj.weight"], t["patch_embed.proj.bias"],
               stride=t["patch_embed.proj.weight"].shape[-1])
  x = x.flatten(2).transpose(1, 2)
  x = torch.cat([t["cls_token"].expand(len(x), -1, -1), x], 1) + t["pos_embed"]
  b, n, _ = x.shape

  def norm(x, name):
    return F.layer_norm(x, (width,), t[f"{name}.weight"], t[f"{name}.bias"],
                        1e-6)

  def linear(x, name):
    return F.linear(x, t[f"{name}.weight"], t[f"{name}.bias"])

  i = 0
  while f"blocks.{i}.norm1.weight" in t:
    block = f"blocks.{i}"
    qkv = linear(norm(x, f"{block}.norm1"), f"{block}.attn.qkv")
    q, k, v = qkv.reshape(b, n, 3, num_heads, -1).permute(2, 0, 3, 1, 4)
    attn = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1)
    x = x + linear((attn @ v).transpose(1, 2).reshape(b, n, width),
                   f"{block}.attn.proj")
    hidden = F.gelu(linear(norm(x, f"{block}.norm2"), f"{block}.mlp.fc1"))
    x = x + linear(hidden, f"{block}.mlp.fc2")
    i += 1
  if "fc_norm.weight" in t:
    features = norm(x[:, 1:].mean(1), "fc_norm")
  else:
    features = norm(x, "norm")[:, 0]
  if "head.1.weight" in t:
    features = F.batch_norm(features, t["head.0.running_mean"],
                            t["head.0.running_var"], training=False, eps=1e-6)
    return linear(features, "head.1").numpy()
  return linear(features, "head").numpy()


@needs_torch
@pytest.mark.parametrize("head", ["finetuned_gap", "linear_probe_cls"])
def test_official_classifier_matches_torch_reference(hf_dirs, tmp_path, head):
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(1)
  state = {k: v for k, v in _official_state(hf_dirs[False]).items()
           if k.startswith(("cls_token", "patch_embed", "blocks", "norm",
                            "pos_embed"))}
  state["pos_embed"] = state["pos_embed"] + 0.3 * torch.randn(1, 37, 96)
  if head == "finetuned_gap":
    del state["norm.weight"], state["norm.bias"]
    state.update({"fc_norm.weight": 1 + 0.3 * torch.randn(96),
                  "fc_norm.bias": 0.3 * torch.randn(96),
                  "head.weight": torch.randn(7, 96) * 0.1,
                  "head.bias": torch.randn(7)})
  else:
    state.update({"head.0.running_mean": torch.randn(96),
                  "head.0.running_var": torch.rand(96) + 0.5,
                  "head.0.num_batches_tracked": torch.tensor(1000),
                  "head.1.weight": torch.randn(7, 96) * 0.1,
                  "head.1.bias": torch.randn(7)})
  run_config, params = convert.load(
      _save_pth(tmp_path / f"{head}.pth", state), num_heads=4)
  assert run_config.mode == "finetune"
  config = run_config.model
  assert config.num_classes == 7 and config.learned_pos_embed
  assert config.pooling == ("gap" if head == "finetuned_gap" else "cls")
  config.dtype = "float32"
  images, _ = _inputs(seed=4)
  logits = jax.jit(models.build_classifier(config).apply)({"params": params},
                                                          images)
  np.testing.assert_allclose(
      logits, _torch_official_classifier(state, images, num_heads=4),
      atol=ATOL, rtol=ATOL)


# --------------------------------------------------- official CAE encoders

CAE_HEADS = 4


def _cae_sincos(width, grid):
  """Atten4Vis/CAE's build_2d_sincos_position_embedding(use_cls_token=True),
  rewritten: meshgrid(grid_w, grid_h) in 'ij' order, [sin, cos] of 'w',
  then of 'h', a zero cls row."""
  grid_w, grid_h = np.meshgrid(np.arange(grid, dtype=np.float32),
                               np.arange(grid, dtype=np.float32),
                               indexing="ij")
  omega = 1.0 / 10000 ** (np.arange(width // 4, dtype=np.float32) /
                          np.float32(width // 4))
  out_w = np.einsum("m,d->md", grid_w.reshape(-1), omega)
  out_h = np.einsum("m,d->md", grid_h.reshape(-1), omega)
  table = np.concatenate([np.sin(out_w), np.cos(out_w), np.sin(out_h),
                          np.cos(out_h)], axis=1)
  return np.concatenate([np.zeros((1, width)), table])[None].astype(
      np.float32)


def _official_cae_encoder_state(seed=0):
  """A random encoder of SIZES under the names of Atten4Vis/CAE's
  VisionTransformerEncoder (BEiT's blocks: q and v biases, gamma_1/2)."""
  import torch  # pylint: disable=g-import-not-at-top
  generator = torch.Generator().manual_seed(seed)

  def r(*shape, around=0.0):
    return around + 0.1 * torch.randn(*shape, generator=generator)

  d, m, p = SIZES["width"], SIZES["mlp_dim"], SIZES["patch_size"]
  state = {"cls_token": r(1, 1, d),
           "pos_embed": torch.from_numpy(_cae_sincos(d, 6)),
           "patch_embed.proj.weight": r(d, 3, p, p),
           "patch_embed.proj.bias": r(d),
           "norm.weight": r(d, around=1.0), "norm.bias": r(d)}
  for i in range(SIZES["depth"]):
    b = f"blocks.{i}"
    state.update({
        f"{b}.gamma_1": r(d, around=0.1), f"{b}.gamma_2": r(d, around=0.1),
        f"{b}.norm1.weight": r(d, around=1.0), f"{b}.norm1.bias": r(d),
        f"{b}.attn.qkv.weight": r(3 * d, d), f"{b}.attn.q_bias": r(d),
        f"{b}.attn.v_bias": r(d), f"{b}.attn.proj.weight": r(d, d),
        f"{b}.attn.proj.bias": r(d),
        f"{b}.norm2.weight": r(d, around=1.0), f"{b}.norm2.bias": r(d),
        f"{b}.mlp.fc1.weight": r(m, d), f"{b}.mlp.fc1.bias": r(m),
        f"{b}.mlp.fc2.weight": r(d, m), f"{b}.mlp.fc2.bias": r(d)})
  return state


def _torch_official_cae_encoder(state, images, bool_masked_pos):
  """VisionTransformerEncoder.forward_features of Atten4Vis/CAE
  (models/modeling_cae_helper.py), written out in torch: the visible
  patches (~bool_masked_pos, in image order) and the cls token."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch.nn import functional as F  # pylint: disable=g-import-not-at-top
  t = state
  x = F.conv2d(torch.from_numpy(images.transpose(0, 3, 1, 2)),
               t["patch_embed.proj.weight"], t["patch_embed.proj.bias"],
               stride=t["patch_embed.proj.weight"].shape[-1])
  x = x.flatten(2).transpose(1, 2)
  b, length, d = x.shape
  visible = ~torch.from_numpy(bool_masked_pos)
  pos = t["pos_embed"].expand(b, length + 1, d)
  x = torch.cat([t["cls_token"].expand(b, -1, -1),
                 x[visible].reshape(b, -1, d)], 1)
  x = x + torch.cat([pos[:, :1], pos[:, 1:][visible].reshape(b, -1, d)], 1)
  n = x.shape[1]

  def norm(x, name):
    return F.layer_norm(x, (d,), t[f"{name}.weight"], t[f"{name}.bias"], 1e-6)

  def linear(x, name):
    return F.linear(x, t[f"{name}.weight"], t[f"{name}.bias"])

  for i in range(SIZES["depth"]):
    block = f"blocks.{i}"
    bias = torch.cat([t[f"{block}.attn.q_bias"],
                      torch.zeros_like(t[f"{block}.attn.v_bias"]),
                      t[f"{block}.attn.v_bias"]])
    qkv = F.linear(norm(x, f"{block}.norm1"), t[f"{block}.attn.qkv.weight"],
                   bias)
    q, k, v = qkv.reshape(b, n, 3, CAE_HEADS, -1).permute(2, 0, 3, 1, 4)
    attn = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
    out = linear((attn @ v).transpose(1, 2).reshape(b, n, d),
                 f"{block}.attn.proj")
    x = x + t[f"{block}.gamma_1"] * out
    hidden = F.gelu(linear(norm(x, f"{block}.norm2"), f"{block}.mlp.fc1"))
    x = x + t[f"{block}.gamma_2"] * linear(hidden, f"{block}.mlp.fc2")
  return norm(x, "norm").numpy()


def _official_cae_pth(tmp_path, name="cae_pretrain.pth", **edits):
  """A pretraining checkpoint of the official code: the encoder under
  'encoder.', next to parts that the conversion drops."""
  import torch  # pylint: disable=g-import-not-at-top
  encoder = _official_cae_encoder_state()
  encoder.update(edits)
  state = {f"encoder.{k}": v for k, v in encoder.items()}
  state.update({"alignment_encoder.cls_token": encoder["cls_token"],
                "mask_token": torch.zeros(1, 1, 96),
                "rd_pos_embed": encoder["pos_embed"],
                "regresser.norm.weight": torch.ones(96),
                "decoder.head.weight": torch.zeros(8192, 96)})
  return _save_pth(tmp_path / name, state, epoch=1599,
                   args=argparse.Namespace(model="cae_base"))


def _our_encoder_on(params, images, ids_keep):
  """The CAE model's encoder path: embed, keep `ids_keep`, transform."""
  encoder = models.VisionEncoder(
      SIZES["patch_size"], SIZES["width"], SIZES["depth"], CAE_HEADS,
      SIZES["mlp_dim"], layer_scale_init=0.1, key_bias=False,
      sincos_order="h_first")
  return encoder.apply(
      {"params": params["encoder"]}, images,
      method=lambda m, x: m.transform(masking.gather(m.embed(x), ids_keep)))


@needs_torch
def test_official_cae_encoder_matches_a_rewrite_of_the_official_one(
    tmp_path):
  # What the command line does, with the heads the tensors cannot tell.
  run_config, params = convert.load(_official_cae_pth(tmp_path),
                                    num_heads=CAE_HEADS)
  assert run_config.mode == "pretrain"
  model = run_config.model
  assert (model.name, model.layer_scale_init, model.key_bias,
          model.sincos_order) == ("cae", 0.1, False, "h_first")
  assert set(params) == {"encoder"}
  np.testing.assert_array_equal(
      params["encoder"]["transformer"]["blocks_1"]["attn"]["qkv"]["bias"][
          96:192], 0.0)

  images, _ = _inputs(seed=5)
  num_patches = 36
  everything = np.zeros((BATCH, num_patches), bool)
  rng = np.random.RandomState(0)
  half = np.stack([rng.permutation(num_patches) < 18 for _ in range(BATCH)])
  for bool_masked_pos in (everything, half):
    ids_keep = np.stack([np.flatnonzero(~m) for m in bool_masked_pos])
    np.testing.assert_allclose(
        _our_encoder_on(params, images, ids_keep),
        _torch_official_cae_encoder(_official_cae_encoder_state(), images,
                                    bool_masked_pos),
        atol=ATOL, rtol=ATOL)


@needs_torch
def test_an_official_cae_encoder_alone_loads_too(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  encoder = _official_cae_encoder_state()
  torch.save({"model": encoder}, str(tmp_path / "encoder.pth"))
  config, alone = convert.load_official_cae(str(tmp_path / "encoder.pth"),
                                            num_heads=CAE_HEADS)
  _, whole = convert.load_official_cae(_official_cae_pth(tmp_path),
                                       num_heads=CAE_HEADS)
  chex.assert_trees_all_equal(alone, whole)
  assert config.name == "cae"
  del encoder["blocks.2.attn.q_bias"]
  torch.save({"model": encoder}, str(tmp_path / "broken.pth"))
  with pytest.raises(ValueError, match="missing \\(1\\): blocks.2.attn.q_bias"):
    convert.load_official_cae(str(tmp_path / "broken.pth"),
                              num_heads=CAE_HEADS)


@needs_torch
def test_an_official_cae_table_in_maes_order_is_refused(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  path = _official_cae_pth(tmp_path, pos_embed=torch.from_numpy(
      _official_sincos(96, 6)))
  with pytest.raises(ValueError, match="encoder.pos_embed is not the fixed "
                     "2-D sin-cos"):
    convert.load_official_cae(path, num_heads=CAE_HEADS)


def test_a_cae_is_not_exported_as_a_vitmae(tmp_path):
  config = convert.cae_config(image_size=48, patch_size=8, width=96, depth=3,
                              num_heads=4, mlp_dim=200, layer_scale_init=0.1)
  with pytest.raises(ValueError, match="this is a CAE"):
    convert.save_hf_vitmae(config, {"encoder": {}, "decoder": {}},
                           str(tmp_path))


@needs_torch
def test_a_converted_cae_encoder_is_what_init_from_takes(tmp_path):
  run_config, params = convert.load(_official_cae_pth(tmp_path),
                                    num_heads=CAE_HEADS)
  checkpointing.save_params(str(tmp_path / "ours"), run_config, params)
  model = convert.classifier_config(
      image_size=48, patch_size=8, width=96, depth=3, num_heads=CAE_HEADS,
      mlp_dim=200, num_classes=5, pooling="cls")
  model.update(learned_pos_embed=False, dtype="float32")
  config = ml_collections.ConfigDict(dict(
      mode="linear_probe", init_from=str(tmp_path / "ours"), model=model))
  model = initialization.adopt_encoder_options(config).model
  fresh = jax.jit(models.build_classifier(model).init)(
      jax.random.key(0), np.zeros((1, 48, 48, 3), np.float32))["params"]
  loaded = initialization.load_pretrained_encoder(str(tmp_path / "ours"),
                                                  fresh, model)
  chex.assert_trees_all_equal(loaded["encoder"], params["encoder"])


# ---------------------------------------- refusing a destination in use


def test_cli_refuses_a_destination_that_holds_a_checkpoint(tmp_path, capsys):
  first, second = tmp_path / "first", tmp_path / "second"
  params = _random_params()
  other = jax.tree.map(lambda x: x + 1, params)
  convert.save_hf_vitmae(_small_config(), params, str(first))
  convert.save_hf_vitmae(_small_config(), other, str(second))
  dst = tmp_path / "ours"
  convert.main([f"--src={first}", f"--dst={dst}"])
  with pytest.raises(SystemExit) as exit_info:
    convert.main([f"--src={second}", f"--dst={dst}"])
  assert exit_info.value.code == 2
  assert "is not empty; give a new directory, or --overwrite" in (
      capsys.readouterr().err)
  chex.assert_trees_all_equal(checkpointing.load_params(str(dst))[1], params)
  convert.main([f"--src={second}", f"--dst={dst}", "--overwrite"])
  chex.assert_trees_all_equal(checkpointing.load_params(str(dst))[1], other)


def test_cli_refuses_a_file_as_destination(tmp_path, capsys):
  (tmp_path / "file").write_text("")
  with pytest.raises(SystemExit):
    convert.main([f"--src={tmp_path}", f"--dst={tmp_path / 'file'}",
                  "--overwrite"])
  assert "is a file; give a directory" in capsys.readouterr().err


# ----------------------------------------- the DALL-E tokenizer (issue 9)

needs_dalle = pytest.mark.needs_modules("torch", "dall_e")
SMALL_DALLE = dict(hidden_width=64, blocks_per_group=1, vocab_size=512)


@needs_dalle
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickled_dalle_encoder_converts_through_the_cli(tmp_path, capsys,
                                                        zip_format):
  import torch  # pylint: disable=g-import-not-at-top
  from dall_e import encoder  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = encoder.Encoder(n_hid=64, n_blk_per_group=2, vocab_size=512)
  # As the release was written: the whole module, pickled.
  torch.save(model, tmp_path / "encoder.pkl",
             _use_new_zipfile_serialization=zip_format)
  convert.main([f"--src={tmp_path / 'encoder.pkl'}",
                f"--dst={tmp_path / 'tokenizer'}"])
  assert "mode=dalle_tokenizer" in capsys.readouterr().out
  stored_config, _ = checkpointing.load_params(str(tmp_path / "tokenizer"))
  assert dict(stored_config.model) == dict(
      hidden_width=64, blocks_per_group=2, vocab_size=512)
  params = dalle.load_tokenizer(str(tmp_path / "tokenizer"))
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  ours = flax.traverse_util.flatten_dict(params, sep="/")
  assert len(ours) == len(state) == 2 * (1 + 4 * 2 * 4 + 3 + 1)
  np.testing.assert_array_equal(
      ours["group_2/block_1/id_path/kernel"],
      state["blocks.group_2.block_1.id_path.w"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      ours["group_4/block_2/conv_3/bias"],
      state["blocks.group_4.block_2.res_path.conv_3.b"])
  np.testing.assert_array_equal(
      ours["output/kernel"][0, 0], state["blocks.output.conv.w"][:, :, 0, 0].T)
  # A state dict, saved alone, is read the same.
  torch.save(model.state_dict(), tmp_path / "state.pkl")
  chex.assert_trees_all_equal(
      convert.load(str(tmp_path / "state.pkl"))[1], params)


@needs_dalle
def test_other_pickles_are_named_and_never_run(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  from dall_e import decoder  # pylint: disable=g-import-not-at-top
  torch.save(decoder.Decoder(n_hid=64, n_blk_per_group=1, vocab_size=512),
             tmp_path / "decoder.pkl")
  with pytest.raises(ValueError, match="holds a pickled "
                     r"dall_e.decoder.Decoder, not a DALL-E encoder \(dall_e."
                     "encoder.Encoder\\): use encoder.pkl"):
    convert.load(str(tmp_path / "decoder.pkl"))

  marker = tmp_path / "ran"

  class Payload:
    def __reduce__(self):
      return (os.mkdir, (str(marker),))

  torch.save({"blocks.input.w": torch.zeros(1), "x": Payload()},
             tmp_path / "payload.pkl")
  with pytest.raises(ValueError, match=r"payload.pkl pickles (posix|os)\.mkdir, "
                     "which a DALL-E encoder does not need"):
    convert.load(str(tmp_path / "payload.pkl"))
  assert not marker.exists()

  torch.save({"cls_token": torch.zeros(1, 1, 8)}, tmp_path / "mae.pkl")
  with pytest.raises(ValueError, match="has no 'blocks.input.w': not a DALL-E "
                     r"encoder \(its tensors \(1\): cls_token\)"):
    convert.load(str(tmp_path / "mae.pkl"))


@needs_torch
def test_a_file_that_torch_cannot_read_is_named(tmp_path):
  (tmp_path / "encoder.pkl").write_text("<html>403 Forbidden</html>")
  with pytest.raises(ValueError, match="encoder.pkl cannot be read as a file "
                     "of torch.save"):
    convert.load(str(tmp_path / "encoder.pkl"))


def test_dalle_encoder_without_torch_asks_for_it(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)
  (tmp_path / "encoder.pkl").write_bytes(b"not read")
  with pytest.raises(ImportError, match="needs torch: pip install torch"):
    convert.load(str(tmp_path / "encoder.pkl"))


def test_dalle_encoder_refuses_mae_options_and_hf_export(tmp_path, capsys):
  path = tmp_path / "encoder.pkl"
  path.write_bytes(b"not read")
  with pytest.raises(ValueError, match="drop --model and --norm_pix_loss"):
    convert.load(str(path), "base/16")
  config = dalle.encoder_config(**SMALL_DALLE)
  rng = np.random.RandomState(0)
  params = flax.traverse_util.unflatten_dict(
      {k: rng.randn(*shape).astype(np.float32) for k, shape in
       dalle.expected_shapes(**SMALL_DALLE).items()}, sep="/")
  checkpointing.save_params(str(tmp_path / "tokenizer"), config, params)
  with pytest.raises(SystemExit):
    convert.main([f"--src={tmp_path / 'tokenizer'}",
                  f"--dst={tmp_path / 'hf'}", "--format=hf"])
  assert "is the DALL-E tokenizer; --format=hf writes ViTMAE models only" in (
      capsys.readouterr().err)

