"""The sharded weighted k-NN against a brute-force numpy k-NN."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mae_jax import knn

AXIS = "batch"
K, TEMPERATURE, CLASSES = 5, 0.07, 4


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _problem(seed=0, bank_size=61, queries=24, dim=8, prototypes=6):
  """A bank drawn from a few prototypes, so that most similarities tie
  exactly and only the data-set index decides between neighbours; distinct
  similarities are far apart, so float32 and float64 order them alike."""
  rng = np.random.default_rng(seed)
  protos = _unit(rng.normal(size=(prototypes, dim))).astype(np.float32)
  bank = protos[rng.integers(prototypes, size=bank_size)]
  labels = rng.integers(CLASSES, size=bank_size).astype(np.int32)
  query = _unit(rng.normal(size=(queries, dim))).astype(np.float32)
  gaps = np.diff(np.sort(query @ protos.T, axis=1), axis=1)
  assert gaps.min() > 1e-4  # the construction holds for this seed
  return bank, labels, query


def _brute_force(bank, labels, query, k):
  """(similarities, labels) of the k nearest, by (similarity desc, index)."""
  similarity = query.astype(np.float64) @ bank.astype(np.float64).T
  index = np.broadcast_to(np.arange(len(bank)), similarity.shape)
  order = np.lexsort((index, -similarity), axis=-1)[:, :k]
  return np.take_along_axis(similarity, order, 1), labels[order]


def _sharded(bank, labels, devices, seed=0):
  """The bank split over `devices` shards the way KNNAccuracy holds it:
  each shard in data-set order, padded to equal length."""
  owner = np.random.default_rng(seed).integers(devices, size=len(bank))
  rows = max(np.bincount(owner, minlength=devices))
  features = np.zeros((devices, rows, bank.shape[1]), np.float32)
  shard_labels = np.zeros((devices, rows), np.int32)
  index = np.full((devices, rows), knn.PADDING_INDEX, np.int32)
  for d in range(devices):
    mine = np.flatnonzero(owner == d)
    features[d, :len(mine)], shard_labels[d, :len(mine)] = bank[mine], labels[
        mine]
    index[d, :len(mine)] = mine
  return features, shard_labels, index


def _neighbours(bank, labels, query, devices, k=K):
  step = jax.pmap(functools.partial(knn.neighbours, k=k, axis_name=AXIS),
                  axis_name=AXIS, devices=jax.local_devices()[:devices])
  features, shard_labels, index = _sharded(bank, labels, devices)
  similarity, found = step(query.reshape(devices, -1, query.shape[1]),
                           features, shard_labels, index)
  return (np.asarray(similarity).reshape(len(query), k),
          np.asarray(found).reshape(len(query), k))


@pytest.mark.parametrize("devices", [1, 8])
def test_neighbours_are_the_brute_force_ones_ties_by_index(devices):
  bank, labels, query = _problem()
  similarity, found = _neighbours(bank, labels, query, devices)
  expected_similarity, expected = _brute_force(bank, labels, query, K)
  np.testing.assert_array_equal(found, expected)
  np.testing.assert_allclose(similarity, expected_similarity, atol=1e-6)
  # The ties were real: for most queries, bank entries as similar as the
  # k-th neighbour were left out, and the data-set index chose.
  kth = expected_similarity[:, -1:]
  tied_in_bank = np.isclose(query @ bank.T, kth, atol=1e-6).sum(axis=1)
  tied_chosen = np.isclose(expected_similarity, kth, atol=1e-6).sum(axis=1)
  assert np.mean(tied_in_bank > tied_chosen) > 0.5


def test_one_and_eight_shards_agree():
  bank, labels, query = _problem(seed=1)
  one = _neighbours(bank, labels, query, 1)
  eight = _neighbours(bank, labels, query, 8)
  np.testing.assert_array_equal(one[1], eight[1])
  # Matmuls of other shapes may round the last bit differently.
  np.testing.assert_allclose(one[0], eight[0], atol=1e-6)


def test_padding_is_never_a_neighbour_of_a_small_bank():
  # 9 bank entries over 8 shards: each shard holds 1 or 2, padded to 2,
  # fewer than k per shard.
  bank, labels, query = _problem(seed=2, bank_size=9)
  similarity, found = _neighbours(bank, labels, query, 8, k=7)
  expected_similarity, expected = _brute_force(bank, labels, query, 7)
  np.testing.assert_array_equal(found, expected)
  assert np.all(np.isfinite(similarity))


def test_votes_weigh_each_neighbour_by_exp_similarity_over_t():
  similarity = np.asarray([[0.9, 0.8, 0.8], [0.5, -0.2, -1.0]], np.float32)
  labels = np.asarray([[2, 0, 2], [1, 1, 3]], np.int32)
  votes = np.asarray(knn.class_votes(similarity, labels, CLASSES, TEMPERATURE))
  w = np.exp(similarity / TEMPERATURE)
  np.testing.assert_allclose(votes, [[w[0, 1], 0, w[0, 0] + w[0, 2], 0],
                                     [0, w[1, 0] + w[1, 1], 0, w[1, 2]]],
                             rtol=1e-6)


@pytest.mark.parametrize("pooling,expected", [
    ("cls", [3.0, 4.0]), ("mean", [1.0, 1.0])])
def test_features_are_unit_vectors_of_the_chosen_tokens(pooling, expected):
  tokens = jnp.asarray([[[3.0, 4.0], [0.0, 2.0], [2.0, 0.0]]])
  np.testing.assert_allclose(knn.features(tokens, pooling)[0],
                             _unit(np.asarray(expected)), rtol=1e-6)


def test_unknown_pooling_is_named():
  with pytest.raises(ValueError, match="knn.pooling='max'.*'cls', 'mean'"):
    knn.features(jnp.zeros((1, 2, 2)), "max")
