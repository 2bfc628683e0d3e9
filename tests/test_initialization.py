import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mae_jax import checkpointing
from mae_jax import initialization
from mae_jax import models
from mae_jax import tasks
from mae_jax import train
from mae_jax.models import dalle
from mae_jax.models import vit
from testing_utils import tiny_cae_config, tiny_classifier_config, tiny_model


def _pretraining_checkpoint(workdir, **model_overrides):
  """A workdir holding an (untrained) tiny MAE's checkpoint."""
  model_config = tiny_model(**model_overrides)
  model = models.build(model_config)
  params = model.init(jax.random.key(7), jnp.zeros((1, 16, 16, 3)),
                      jnp.zeros((1, model.num_patches)))["params"]
  config = ml_collections.ConfigDict({"mode": "pretrain",
                                      "model": model_config})
  checkpointing.save_params(str(workdir), config, jax.device_get(params),
                            step=3)
  return params


def _fresh_classifier(model_config):
  model = models.build_classifier(model_config)
  size = model_config.image_size
  return jax.device_get(model.init(jax.random.key(0),
                                   jnp.zeros((1, size, size, 3)))["params"])


def _flat(tree):
  return flax.traverse_util.flatten_dict(tree, sep="/")


def test_encoder_is_copied_and_the_decoder_dropped(tmp_path):
  pretrained = _flat(_pretraining_checkpoint(tmp_path)["encoder"])
  model_config = tiny_classifier_config("linear_probe").model
  fresh = _fresh_classifier(model_config)
  params = initialization.load_pretrained_encoder(str(tmp_path), fresh,
                                                  model_config)
  assert set(params) == {"encoder", "head"}
  loaded = _flat(params["encoder"])
  assert set(loaded) == set(pretrained)
  for name, value in loaded.items():
    np.testing.assert_array_equal(value, pretrained[name], err_msg=name)
  np.testing.assert_array_equal(params["head"]["kernel"],
                                fresh["head"]["kernel"])


def test_global_pool_model_loads_without_the_final_norm(tmp_path):
  _pretraining_checkpoint(tmp_path)
  model_config = tiny_classifier_config("finetune").model
  params = initialization.load_pretrained_encoder(
      str(tmp_path), _fresh_classifier(model_config), model_config)
  assert "norm" not in params["encoder"]["transformer"]
  # No learned pos_embed in a pretraining checkpoint: the sin-cos table.
  np.testing.assert_array_equal(params["encoder"]["pos_embed"][0, 1:],
                                vit.sincos_pos_embed_2d(32, 4, 4))


def test_other_patch_size_is_a_clear_error(tmp_path):
  _pretraining_checkpoint(tmp_path)
  model_config = tiny_classifier_config("finetune").model
  model_config.patch_size = 8
  with pytest.raises(ValueError, match="patch size 4.*patch_size=4"):
    initialization.load_pretrained_encoder(
        str(tmp_path), _fresh_classifier(model_config), model_config)


@pytest.mark.parametrize("change, expected", [
    (dict(width=48), "encoder/patch_embed/kernel: checkpoint (48, 32) vs "
     "model (48, 48)"),
    (dict(depth=3), "encoder/transformer/blocks_2/attn/qkv/kernel: not in "
     "the checkpoint"),
    (dict(depth=1), "encoder/transformer/blocks_1/attn/qkv/kernel: in the "
     "checkpoint, not in the model"),
])
def test_mismatched_encoder_names_the_parameters(tmp_path, change, expected):
  _pretraining_checkpoint(tmp_path)
  model_config = tiny_classifier_config("finetune").model
  model_config.update(change)
  with pytest.raises(ValueError, match="does not fit") as error:
    initialization.load_pretrained_encoder(
        str(tmp_path), _fresh_classifier(model_config), model_config)
  assert expected in str(error.value)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  model_config = tiny_classifier_config("finetune").model
  with pytest.raises(FileNotFoundError, match="no checkpoint under"):
    initialization.load_pretrained_encoder(
        str(tmp_path), _fresh_classifier(model_config), model_config)


def _torch_bicubic(table: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  """The patch rows of (1, 1 + h*h, D) resized as the reference's
  interpolate_pos_embed does, with torch."""
  import torch  # pylint: disable=g-import-not-at-top
  side = int(round(np.sqrt(table.shape[1] - 1)))
  tokens = torch.from_numpy(np.ascontiguousarray(table[0, 1:])).reshape(
      1, side, side, -1).permute(0, 3, 1, 2)
  resized = torch.nn.functional.interpolate(
      tokens, size=grid, mode="bicubic", align_corners=False)
  return resized.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).numpy()


def test_fine_tuning_at_a_higher_resolution_resizes_the_sincos_table(
    tmp_path):
  pretrained = _flat(_pretraining_checkpoint(tmp_path)["encoder"])
  model_config = tiny_classifier_config("finetune").model
  model_config.image_size = 32  # 8x8 patches instead of 4x4
  params = initialization.load_pretrained_encoder(
      str(tmp_path), _fresh_classifier(model_config), model_config)
  # The reference resizes the checkpoint's 4x4 sin-cos table, cls row 0.
  checkpoint_table = np.pad(vit.sincos_pos_embed_2d(32, 4, 4),
                            ((1, 0), (0, 0)))[None]
  pos_embed = params["encoder"]["pos_embed"]
  np.testing.assert_array_equal(pos_embed[:, 0], 0.0)
  # resize_pos_embed is torch's bicubic (tested below).
  np.testing.assert_allclose(
      pos_embed, initialization.resize_pos_embed(checkpoint_table, (8, 8)),
      rtol=1e-6, atol=1e-6)
  assert not np.allclose(pos_embed[0, 1:], vit.sincos_pos_embed_2d(32, 8, 8),
                         atol=1e-3)
  np.testing.assert_array_equal(
      params["encoder"]["patch_embed"]["kernel"],
      pretrained["patch_embed/kernel"])
  logits = models.build_classifier(model_config).apply(
      {"params": params}, jnp.zeros((2, 32, 32, 3)))
  assert logits.shape == (2, 10)


def test_sincos_resize_starts_from_the_table_of_the_new_grid(tmp_path):
  _pretraining_checkpoint(tmp_path)
  model_config = tiny_classifier_config("finetune").model
  model_config.image_size = 32
  params = initialization.load_pretrained_encoder(
      str(tmp_path), _fresh_classifier(model_config), model_config,
      pos_embed_resize="sincos")
  np.testing.assert_array_equal(params["encoder"]["pos_embed"][0, 1:],
                                vit.sincos_pos_embed_2d(32, 8, 8))


def test_fixed_table_at_another_resolution_asks_for_a_choice(tmp_path):
  _pretraining_checkpoint(tmp_path)
  model_config = tiny_classifier_config("linear_probe").model  # fixed table
  model_config.image_size = 32
  fresh = _fresh_classifier(model_config)
  with pytest.raises(ValueError, match="learned_pos_embed=True.*"
                     "pos_embed_resize=sincos"):
    initialization.load_pretrained_encoder(str(tmp_path), fresh, model_config)
  params = initialization.load_pretrained_encoder(
      str(tmp_path), fresh, model_config, pos_embed_resize="sincos")
  assert "pos_embed" not in params["encoder"]


def test_learned_position_embedding_is_resized_bicubically(tmp_path):
  model_config = tiny_classifier_config("finetune").model
  params = _fresh_classifier(model_config)
  learned = np.random.default_rng(0).normal(size=(1, 17, 32)).astype(
      np.float32)
  params["encoder"]["pos_embed"] = learned
  checkpointing.save_params(
      str(tmp_path), ml_collections.ConfigDict(
          {"mode": "finetune", "model": model_config}), params)
  model_config.image_size = 24  # 6x6 patches
  loaded = initialization.load_pretrained_encoder(
      str(tmp_path), _fresh_classifier(model_config), model_config)
  pos_embed = loaded["encoder"]["pos_embed"]
  assert pos_embed.shape == (1, 37, 32)
  np.testing.assert_array_equal(pos_embed[:, 0], learned[:, 0])
  np.testing.assert_allclose(
      pos_embed, initialization.resize_pos_embed(learned, (6, 6)))


def test_resize_pos_embed_to_the_same_grid_is_the_identity():
  table = np.random.default_rng(1).normal(size=(1, 1 + 25, 8))
  np.testing.assert_allclose(initialization.resize_pos_embed(table, (5, 5)),
                             table, atol=1e-12)


@pytest.mark.needs_modules("torch")
def test_resize_pos_embed_matches_torch_bicubic():
  table = np.random.default_rng(2).normal(size=(1, 1 + 49, 6)).astype(
      np.float32)
  np.testing.assert_allclose(
      initialization.resize_pos_embed(table, (12, 10))[:, 1:],
      _torch_bicubic(table, (12, 10)), rtol=1e-5, atol=1e-5)


def _cae_checkpoint(workdir):
  """A workdir holding an (untrained) tiny CAE's checkpoint."""
  config = tiny_cae_config()
  task = tasks.make_task(config, train.AXIS)
  params, _ = task.init_variables(jax.random.key(5), False)
  checkpointing.save_params(str(workdir), config, jax.device_get(params))
  return config, jax.device_get(params)


def test_classifiers_adopt_the_encoder_options_of_init_from(tmp_path):
  _, params = _cae_checkpoint(tmp_path)
  config = tiny_classifier_config("finetune", init_from=str(tmp_path))
  config.model.image_size = 24
  adopted = initialization.adopt_encoder_options(config)
  assert (adopted.model.layer_scale_init, adopted.model.key_bias,
          adopted.model.sincos_order) == (0.1, False, "h_first")
  assert config.model.layer_scale_init == 0.0  # the given config is kept
  loaded = initialization.load_pretrained_encoder(
      str(tmp_path), _fresh_classifier(adopted.model), adopted.model)
  block = loaded["encoder"]["transformer"]["blocks_0"]
  np.testing.assert_array_equal(
      block["layer_scale_mlp"],
      params["encoder"]["transformer"]["blocks_0"]["layer_scale_mlp"])
  # The fine-tuned position embedding starts from CAE's table (h first).
  np.testing.assert_array_equal(
      loaded["encoder"]["pos_embed"][0, 1:],
      vit.sincos_pos_embed_2d(32, 6, 6, "h_first"))


def test_without_adopting_a_cae_encoder_names_the_layer_scales(tmp_path):
  _cae_checkpoint(tmp_path)
  model_config = tiny_classifier_config("finetune").model
  model_config.image_size = 24
  with pytest.raises(ValueError, match="layer_scale_attn: in the checkpoint"):
    initialization.load_pretrained_encoder(
        str(tmp_path), _fresh_classifier(model_config), model_config)


def test_checkpoints_from_before_the_options_count_as_mae(tmp_path):
  _pretraining_checkpoint(tmp_path)
  stored = checkpointing.load_config(str(tmp_path))
  for name in initialization.ENCODER_OPTIONS:
    del stored.model[name]  # as written before the options existed
  checkpointing.save_params(str(tmp_path / "old"), stored,
                            checkpointing.load_params(str(tmp_path))[1])
  config = tiny_classifier_config("linear_probe",
                                  init_from=str(tmp_path / "old"))
  config.model.update(layer_scale_init=0.1, sincos_order="h_first")
  adopted = initialization.adopt_encoder_options(config)
  assert (adopted.model.layer_scale_init, adopted.model.key_bias,
          adopted.model.sincos_order) == (0.0, True, "w_first")


def test_pretraining_and_runs_without_init_from_keep_their_config():
  for config in (tiny_cae_config(), tiny_classifier_config("finetune")):
    assert initialization.adopt_encoder_options(config) is config


def test_the_dalle_tokenizer_is_not_taken_for_an_encoder(tmp_path):
  params = dalle.DalleEncoder(hidden_width=8, blocks_per_group=1).init(
      jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32))["params"]
  checkpointing.save_params(str(tmp_path), dalle.encoder_config(
      hidden_width=8, blocks_per_group=1), jax.device_get(params))
  config = tiny_classifier_config("linear_probe", init_from=str(tmp_path))
  with pytest.raises(ValueError, match="holds the DALL-E tokenizer"):
    initialization.adopt_encoder_options(config)


def test_a_resumed_classifier_takes_the_options_of_its_own_checkpoint(
    tmp_path):
  _cae_checkpoint(tmp_path / "cae")
  config = tiny_classifier_config("finetune", init_from=str(tmp_path / "cae"),
                                  total_steps=1)
  config.model.image_size = 24
  train.train_and_evaluate(config, str(tmp_path / "run"))
  # init_from gone (or not given, as for eval_only): the run's own options.
  config.init_from = ""
  adopted = initialization.adopt_encoder_options(config, str(tmp_path / "run"))
  assert (adopted.model.layer_scale_init, adopted.model.sincos_order) == (
      0.1, "h_first")


def test_a_probe_run_is_not_an_encoder_source(tmp_path):
  _cae_checkpoint(tmp_path / "cae")
  probe = tiny_classifier_config("linear_probe",
                                 init_from=str(tmp_path / "cae"),
                                 total_steps=1)
  probe.model.image_size = 24
  train.train_and_evaluate(probe, str(tmp_path / "probe"))
  config = tiny_classifier_config("finetune", init_from=str(tmp_path / "probe"))
  config.model.image_size = 24
  config = initialization.adopt_encoder_options(config)
  with pytest.raises(ValueError, match="linear_probe run, whose checkpoints "
                     "hold only the parameters it trained"):
    initialization.load_pretrained_encoder(
        config.init_from, _fresh_classifier(config.model), config.model)
