"""Where XLA's estimate of the TPU step goes, part of the model by part.

`python -m mae_jax.benchmark --topology=...` reports one figure for the
compiled step, XLA's estimated run time. The TPU compiler also writes, into
its dump of the compiled program, an estimate of cycles for every operation
it emits (`estimated_cycles` in each operation's backend config). This
script compiles the trainer's step the same way (mae_jax/tpu_estimate.py)
with that dump on, and sums the cycles by what the operations compute (the
`op_name` that JAX gives each of them: module path, einsum, forward or
backward), so that a slow step says which part is slow:

  python benchmarks/tpu_op_breakdown.py --config=configs/mae_vit_large_pretrain.py \
      --topology=v3-8 --pod=v3-128

It prints the groups, largest first, and then the estimate's JSON line with
"op_shares" added. Read the figures as shares: the gradient all-reduce
carries no per-operation estimate (see BENCHMARKS.md for its cost), and the
summed cycles are not the step's estimate (at the chip's clock they come to
more than `optimal_seconds`). Needs libtpu (`scripts/in_venv.sh
--tpu_estimate python benchmarks/tpu_op_breakdown.py ...`).
"""

import collections
import json
import os
import re
import shutil
import sys
import tempfile

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mae_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
# Importing JAX starts no backend: XLA_FLAGS set in main still count.
from mae_jax import tpu_estimate  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS

OUTSIDE_THE_MODEL = "outside the model: AdamW update, norms, weight casts"
AROUND_THE_BLOCKS = "embedding, masking, loss"

_COMPUTATION = re.compile(r"^(ENTRY )?%([\w.\-]+) .*\{$")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%[\w.\-]+ = .*? ([a-z\-]+)\(")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_CYCLES = re.compile(r'"estimated_cycles":"(\d+)"')
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def group_of(op_name: str, is_matmul: bool) -> str:
  """The part of the step an operation belongs to, from its JAX op_name.

  Operations outside the differentiated loss (no `jvp(`) are the optimizer
  update, the norms and the casts of the weights; inside, the transformer
  block's sub-module (attention, MLP, LayerNorm) of the encoder, decoder or
  regressor, with the attention's matmuls split into the token-by-token
  products (QK, PV: einsums over the heads' (b, h, q, k) axes) and the
  projections in and out of the heads. Forward and backward are summed.
  """
  if "jvp(" not in op_name:
    return OUTSIDE_THE_MODEL
  parts = op_name.split("/")
  block = next((i for i, p in enumerate(parts) if p.startswith("blocks_")),
               None)
  if block is None:
    return AROUND_THE_BLOCKS
  owner = parts[block - 1]
  if owner == "transformer" and block >= 2:
    owner = parts[block - 2]
  owner = owner.split(".")[0]
  sub = parts[block + 1] if block + 1 < len(parts) else ""
  if "attn" in sub:
    if not is_matmul:
      return f"{owner} attention: softmax and other"
    if "bhq" in op_name or "bhk" in op_name:
      return f"{owner} attention: QK and PV products"
    return f"{owner} attention: projections to and from the heads"
  if sub == "mlp":
    return f"{owner} MLP: " + ("products (GELU fused in)" if is_matmul else
                               "other")
  if sub.startswith("norm"):
    return f"{owner} LayerNorm"
  return f"{owner} residual adds and other"


def cycles_by_group(hlo_text: str) -> dict[str, int]:
  """Estimated cycles of the entry computation's operations, by
  `group_of`, from a TPU `after_codegen` dump."""
  computations, name, entry = {}, None, None
  for line in hlo_text.splitlines():
    match = _COMPUTATION.match(line)
    if match:
      name = match.group(2)
      computations[name] = []
      if match.group(1):
        entry = name
    elif name is not None and line.startswith("  "):
      computations[name].append(line)
  if entry is None:
    raise ValueError("no ENTRY computation in the dump")
  has_matmul = {
      name: any(re.search(r" (convolution|dot)\(", line) for line in lines)
      for name, lines in computations.items()}
  groups = collections.Counter()
  for line in computations[entry]:
    instruction, cycles = _INSTRUCTION.match(line), _CYCLES.search(line)
    if not instruction or not cycles:
      continue
    calls = _CALLS.search(line)
    is_matmul = instruction.group(1) in ("convolution", "dot") or bool(
        calls and has_matmul.get(calls.group(1)))
    op_name = _OP_NAME.search(line)
    groups[group_of(op_name.group(1) if op_name else "", is_matmul)] += int(
        cycles.group(1))
  return dict(groups)


def shares(groups: dict[str, int]) -> dict[str, float]:
  """Each group's share of the summed cycles, largest first."""
  total = sum(groups.values())
  return {name: cycles / total for name, cycles in
          sorted(groups.items(), key=lambda item: -item[1])}


def step_dump(dump_dir: str) -> str:
  """The text of the train step's `after_codegen` dump in `dump_dir`."""
  dumps = [f for f in os.listdir(dump_dir)
           if "per_device" in f and f.endswith(".after_codegen.txt")]
  if not dumps:
    raise SystemExit(f"XLA wrote no after_codegen dump of the step into "
                     f"{dump_dir}; per-operation estimates need libtpu "
                     "0.0.42 (scripts/in_venv.sh --tpu_estimate)")
  largest = max(dumps, key=lambda f: os.path.getsize(
      os.path.join(dump_dir, f)))
  with open(os.path.join(dump_dir, largest), encoding="utf-8") as f:
    return f.read()


def _dump_the_step_into(dump_dir: str):
  """Has XLA write the compiled step into `dump_dir`: it reads XLA_FLAGS
  when JAX starts its first backend, so call this before that."""
  os.environ["XLA_FLAGS"] = " ".join(filter(None, (
      os.environ.get("XLA_FLAGS"), f"--xla_dump_to={dump_dir}",
      "--xla_dump_hlo_as_text", "--xla_dump_hlo_module_re=.*per_device.*",
      "--xla_dump_hlo_pass_re=^$")))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  dump_dir = tempfile.mkdtemp(prefix="tpu_op_breakdown_")
  try:
    _dump_the_step_into(dump_dir)
    result = tpu_estimate.estimate(FLAGS.config, FLAGS.topology, FLAGS.pod)
    op_shares = shares(cycles_by_group(step_dump(dump_dir)))
  finally:
    shutil.rmtree(dump_dir, ignore_errors=True)
  for name, share in op_shares.items():
    print(f"{share:6.1%}  {name}", file=sys.stderr)
  print(json.dumps({**result, "op_shares": op_shares}))


if __name__ == "__main__":
  tpu_estimate.define_flags("A configs/*.py file.")
  cli.run_absl(main)
