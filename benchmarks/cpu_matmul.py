"""The CPU step's matmuls, XLA:CPU against PyTorch: python benchmarks/cpu_matmul.py.

mae_jax's CPU step and the PyTorch reference (benchmarks/torch_mae_step.py)
do the same matmuls; ~90% of either step's time is in them. Which one is
faster on a given CPU is mostly a matter of the matmul library each brings:
XLA:CPU its own kernels (YNNPACK, Eigen), PyTorch Intel's MKL. This times
the dense layers of the MAE ViT-B/16 step at the CPU benchmark's batch of 8
(encoder: 8 x 50 visible tokens, width 768; decoder: 8 x 197 tokens, width
512), each as the forward product and the two products of its backward (dX =
dY W^T, dW = X^T dY), and one block's attention products (many small
matmuls, one per image and head), float32, in both libraries, each in its
own process, in interleaved rounds. It prints one JSON line per library and
round and a table of medians.

  python benchmarks/cpu_matmul.py --rounds=3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BATCH = 8
ENCODER_TOKENS = BATCH * 50  # 49 visible patches and the class token
DECODER_TOKENS = BATCH * 197  # every patch and the class token

# (name, rows, inputs, outputs) of the step's dense layers.
LAYERS = (
    ("encoder qkv", ENCODER_TOKENS, 768, 3 * 768),
    ("encoder attention output", ENCODER_TOKENS, 768, 768),
    ("encoder MLP in", ENCODER_TOKENS, 768, 4 * 768),
    ("encoder MLP out", ENCODER_TOKENS, 4 * 768, 768),
    ("decoder qkv", DECODER_TOKENS, 512, 3 * 512),
    ("decoder attention output", DECODER_TOKENS, 512, 512),
    ("decoder MLP in", DECODER_TOKENS, 512, 4 * 512),
    ("decoder MLP out", DECODER_TOKENS, 4 * 512, 512),
)
# One block's token-by-token attention products, batched over the images
# and heads: (name, batch, rows, inputs, outputs). Taken as a layer whose
# input is the attention probabilities P (queries x keys) and whose weight
# is the values V (keys x head width), its forward is P V, its dX dO V^T
# (the form of the logits Q K^T as well) and its dW P^T dO (the form of dV
# and dK): the three forms of product the attention runs.
ATTENTION = (
    ("encoder attention P V", BATCH * 12, 50, 50, 64),
    ("decoder attention P V", BATCH * 16, 197, 197, 32),
)
PRODUCTS = ("forward", "dX", "dW")


def best_seconds(call, repeats: int) -> float:
  """The fastest of `repeats` calls after one untimed call."""
  call()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    call()
    best = min(best, time.perf_counter() - start)
  return best


def xla_products(rows: int, inputs: int, outputs: int, batch: tuple = ()):
  """The forward, dX and dW products of a layer, each a call that runs it
  (`batch`: leading dimensions of independent products)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  x = jnp.ones(batch + (rows, inputs), jnp.float32)
  w = jnp.ones(batch + (inputs, outputs), jnp.float32)
  dy = jnp.ones(batch + (rows, outputs), jnp.float32)
  forward = jax.jit(lambda x, w: x @ w)
  d_x = jax.jit(lambda dy, w: dy @ w.mT)
  d_w = jax.jit(lambda x, dy: x.mT @ dy)
  return (lambda: forward(x, w).block_until_ready(),
          lambda: d_x(dy, w).block_until_ready(),
          lambda: d_w(x, dy).block_until_ready())


def torch_products(rows: int, inputs: int, outputs: int, batch: tuple = ()):
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    sys.exit("cpu_matmul.py: PyTorch is not installed; it is a test "
             "dependency (pip install -r requirements-test.txt)")
  x = torch.ones(*batch, rows, inputs)
  w = torch.ones(*batch, inputs, outputs)
  dy = torch.ones(*batch, rows, outputs)
  return (lambda: x @ w, lambda: dy @ w.mT, lambda: x.mT @ dy)


def measure(library: str, repeats: int, layers=LAYERS,
            attention=ATTENTION) -> dict:
  """GFLOP/s of every product of every dense layer and attention product,
  in this process, and of all dense layers together and all attention
  products together (their FLOPs over the sum of their times)."""
  products = xla_products if library == "xla" else torch_products
  gflops = {}

  def timed(name, batch, rows, inputs, outputs):
    flop = 2 * batch * rows * inputs * outputs
    shape = (batch,) if batch > 1 else ()
    total_s = 0.0
    for product, call in zip(PRODUCTS, products(rows, inputs, outputs,
                                                shape)):
      seconds = best_seconds(call, repeats)
      gflops[f"{name}, {product}"] = flop / seconds / 1e9
      total_s += seconds
    return len(PRODUCTS) * flop, total_s

  def together(entries):
    flop, seconds = map(sum, zip(*entries)) if entries else (0, 0.0)
    return flop / seconds / 1e9 if seconds else None

  dense = [timed(name, 1, *dims) for name, *dims in layers]
  batched = [timed(*entry) for entry in attention]
  return {"library": library, "gflop_per_s": gflops,
          "all_layers_gflop_per_s": together(dense),
          "attention_gflop_per_s": together(batched),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def median_table(results: dict[str, list[dict]]) -> str:
  """Per product, each library's median GFLOP/s over the rounds."""
  lines = ["| product | XLA:CPU GFLOP/s | PyTorch GFLOP/s | PyTorch / XLA |",
           "|---|---|---|---|"]
  together = {"all layers": "all_layers_gflop_per_s",
              "all attention products": "attention_gflop_per_s"}
  keys = [*results["xla"][0]["gflop_per_s"],
          *(key for key, field in together.items()
            if results["xla"][0].get(field))]
  for key in keys:
    median = {
        library: statistics.median(
            line[together[key]] if key in together
            else line["gflop_per_s"][key] for line in lines_of_library)
        for library, lines_of_library in results.items()}
    lines.append(f"| {key} | {median['xla']:.0f} | {median['torch']:.0f} | "
                 f"{median['torch'] / median['xla']:.2f}x |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=10,
                      help="timed calls of each product (the fastest counts)")
  parser.add_argument("--library", choices=("xla", "torch"),
                      help="measure one library in this process (what each "
                      "round runs)")
  args = parser.parse_args()
  if args.rounds < 1 or args.repeats < 1:
    parser.error("--rounds and --repeats must be at least 1")
  if args.library:
    print(json.dumps(measure(args.library, args.repeats)))
    return
  results = {"xla": [], "torch": []}
  for round_index in range(args.rounds):
    for library in results:
      command = [sys.executable, os.path.abspath(__file__),
                 f"--library={library}", f"--repeats={args.repeats}"]
      done = subprocess.run(command, capture_output=True, text=True,
                            check=False)
      if done.returncode != 0:
        sys.exit(done.stderr.strip()[-2000:] or
                 f"cpu_matmul.py: the {library} round failed")
      line = json.loads(done.stdout.strip().splitlines()[-1])
      print(json.dumps({"round": round_index, **line}), flush=True)
      results[library].append(line)
  print(median_table(results))


if __name__ == "__main__":
  main()
