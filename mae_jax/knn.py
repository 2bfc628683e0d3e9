"""Weighted k-NN classification of frozen features, sharded over devices.

The recipe of DINO's `eval_knn.py` (Caron et al. 2021, §4 and appendix; after
Wu et al. 2018): L2-normalised features, the training split as the bank, the
k = 20 most similar bank images (cosine similarity) vote for their class with
weight exp(similarity / T), T = 0.07.

The bank is sharded: each device holds the features of the bank images it
embedded (mae_jax/evaluators.py `KNNAccuracy` builds it), so no device ever
holds more than its share. `neighbours` runs under pmap: every device sees
every query of the step, finds its shard's k best bank entries for each,
and the candidates of all shards then meet on the device that owns the
query, which keeps the k best overall. Ties are broken by the bank image's
index in its data set, so the result is the same on any number of devices
(up to the last bit of a similarity, which matmuls of other shapes may round
differently).
"""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

POOLINGS = ("cls", "mean")
# The bank index of padding entries: after every real example in the order
# of `neighbours`, whose similarity is -inf anyway.
PADDING_INDEX = np.iinfo(np.int32).max


def features(tokens: jnp.ndarray, pooling: str) -> jnp.ndarray:
  """(B, 1 + L, D) encoder tokens -> (B, D) float32 unit vectors: the cls
  token, or the mean of the patch tokens."""
  if pooling == "cls":
    pooled = tokens[:, 0]
  elif pooling == "mean":
    pooled = tokens[:, 1:].mean(axis=1)
  else:
    raise ValueError(f"knn.pooling={pooling!r}; use one of {POOLINGS}")
  pooled = pooled.astype(jnp.float32)
  norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
  return pooled / jnp.maximum(norm, 1e-12)  # as torch's F.normalize


def _shard_neighbours(queries: jnp.ndarray, bank: jnp.ndarray,
                      bank_index: jnp.ndarray, k: int
                      ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The k most similar entries of this device's bank shard for each query.

  queries (blocks, b, D) are compared one block at a time, so the similarity
  matrix in memory is (b, shard size). Returns similarities and positions in
  the shard, (blocks, b, k); equal similarities keep the lower position,
  which within a shard is the lower data-set index.
  """
  k = min(k, bank.shape[0])
  padding = bank_index == PADDING_INDEX

  def search(block):
    similarity = jnp.einsum("qd,nd->qn", block, bank,
                            preferred_element_type=jnp.float32)
    return lax.top_k(jnp.where(padding, -jnp.inf, similarity), k)

  return lax.map(search, queries)


def neighbours(queries: jnp.ndarray, bank: jnp.ndarray,
               bank_labels: jnp.ndarray, bank_index: jnp.ndarray, k: int,
               axis_name: str) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The k nearest bank entries of this device's queries, over all shards.

  Under pmap over `axis_name`: `queries` (b, D) are this device's, `bank`
  (n, D), `bank_labels` and `bank_index` (n,) its shard (padding marked by
  PADDING_INDEX). Returns (similarity, label) of the k nearest, (b, k),
  most similar first; equal similarities are ordered by data-set index.
  """
  everyone = lax.all_gather(queries, axis_name)  # (devices, b, D)
  similarity, position = _shard_neighbours(everyone, bank, bank_index, k)
  index, label = bank_index[position], bank_labels[position]
  # Block j holds the candidates for device j's queries: send it there.
  similarity, index, label = (
      lax.all_to_all(x, axis_name, 0, 0)  # (devices, b, k) from every shard
      for x in (similarity, index, label))
  # (b, devices * k), ordered by (-similarity, index): the k best come first.
  negative, _, label = lax.sort(
      [x.transpose(1, 0, 2).reshape(x.shape[1], -1)
       for x in (-similarity, index, label)], dimension=1, num_keys=2)
  return -negative[:, :k], label[:, :k]


def class_votes(similarity: jnp.ndarray, labels: jnp.ndarray,
                num_classes: int, temperature: float) -> jnp.ndarray:
  """(b, num_classes) votes: each neighbour adds exp(similarity / T) to its
  class."""
  weights = jnp.exp(similarity / temperature)
  return jnp.einsum("bk,bkc->bc", weights,
                    jax.nn.one_hot(labels, num_classes, dtype=jnp.float32))
