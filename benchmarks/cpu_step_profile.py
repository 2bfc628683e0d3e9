"""Where the CPU step's time goes, by kind of operation.

  python benchmarks/cpu_step_profile.py --config=configs/mae_vit_base_pretrain.py \
      --config.batch_size=8 --config.model.dtype=float32 --steps=3

Compiles the trainer's step as `python -m mae_jax.benchmark` does, runs it
once, then traces `--steps` steps with jax.profiler and XLA:CPU's
per-operation trace events (`--xla_cpu_enable_xprof_traceme`). Each traced
operation of the compiled step is then put in one of four kinds by its HLO
instruction:

- matmuls: `dot`, and the library fusions that XLA:CPU hands matmuls to
  (YNNPACK, oneDNN, XNNPACK);
- copies of the train state: a `copy` of one of the step's inputs. The state
  is donated, and XLA:CPU copies a donated input before an operation that
  writes the new value in its place while another still reads the old one;
- other copies;
- everything else: fused elementwise work, reductions, the all-reduce.

It prints each kind's seconds per step, summed over its operations, and
their shares (an operation counts once however many threads it splits its
work over; XLA:CPU may also run independent operations at once, so the sum
can exceed the step's wall-clock), the bytes of state copied per step, the
slowest operations, and where the operations other than matmuls come from
(JAX's `op_name`: the model's module and operation, forward or backward, or
the optimizer outside the model); then one JSON line with all of it.
"""

# pylint: disable=g-import-not-at-top,wrong-import-position
if __name__ == "__main__":
  import os
  import sys
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))
  from mae_jax import huge_pages  # the benchmark's malloc, as it runs
  huge_pages.reexec_with_huge_page_malloc()

import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mae_jax import cli
# Importing JAX starts no backend: XLA_FLAGS set in main still count.
from mae_jax import benchmark
from mae_jax import tpu_estimate

# --config and --steps are mae_jax.benchmark's (defined when it is imported).
FLAGS = flags.FLAGS
flags.DEFINE_integer("top", 10, "How many of the slowest operations, "
                     "and of the largest sources of the others, to list.",
                     lower_bound=1)

KINDS = ("matmuls", "copies of the train state", "other copies",
         "everything else")
MATMUL_FUSIONS = ("__ynn_fusion", "__onednn_fusion", "__xnn_fusion")
BYTES = {"f64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2,
         "s8": 1, "u8": 1, "pred": 1, "s64": 8, "u64": 8}
INSTRUCTION = re.compile(
    r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\]\S* (\S+?)\((.*)$")


def entry_instructions(hlo_text: str) -> dict[str, dict]:
  """The ENTRY computation's array instructions by name: opcode, operands
  and bytes, and which of them are parameters (the step's inputs)."""
  entry = hlo_text[hlo_text.index("\nENTRY"):]
  found = {}
  for line in entry.splitlines():
    match = INSTRUCTION.match(line)
    if not match:
      continue
    name, dtype, dims, opcode, rest = match.groups()
    size = 1
    for dim in filter(None, dims.split(",")):
      size *= int(dim)
    fusion_kind = re.search(r'"kind":"(__\w+)"', rest)
    op_name = re.search(r'op_name="([^"]*)"', rest)
    found[name] = {
        "opcode": opcode,
        "operands": re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0]),
        "bytes": size * BYTES.get(dtype, 4),
        "fusion_kind": fusion_kind.group(1) if fusion_kind else None,
        "source": source_of(op_name.group(1) if op_name else "")}
  return found


def source_of(op_name: str) -> str:
  """What in the program made an operation, from JAX's `op_name`, with the
  block index dropped so that all blocks' operations add up: e.g.
  "transpose(jvp(MAE))/MAE.decode/decoder/transformer/blocks/mlp/add_any"
  (the backward pass) or "add" (outside the model: the optimizer update)."""
  if not op_name:
    return "(no op_name: copies XLA inserted)"
  op_name = re.sub(r"^jit\([^)]*\)/", "", op_name)
  return re.sub(r"blocks_\d+", "blocks", op_name)


def kind_of(instruction: dict, instructions: dict[str, dict]) -> str:
  if (instruction["opcode"] == "dot" or
      instruction["fusion_kind"] in MATMUL_FUSIONS):
    return "matmuls"
  if instruction["opcode"] == "copy":
    operand = instructions.get(instruction["operands"][0], {})
    if operand.get("opcode") == "parameter":
      return "copies of the train state"
    return "other copies"
  return "everything else"


def seconds_by_kind(events: list[dict], instructions: dict[str, dict],
                    steps: int) -> tuple[dict[str, float], dict[str, float],
                                         dict[str, float]]:
  """Seconds per step of each kind, of each instruction, and of each source
  (`source_of`) of the operations that are not matmuls, from the trace's
  complete events ("ph": "X", "dur" in microseconds) that carry an
  instruction's name."""
  by_kind = dict.fromkeys(KINDS, 0.0)
  by_instruction = collections.Counter()
  by_source = collections.Counter()
  for event in events:
    instruction = instructions.get(event.get("name"))
    if event.get("ph") != "X" or instruction is None:
      continue
    seconds = event["dur"] / 1e6 / steps
    kind = kind_of(instruction, instructions)
    by_kind[kind] += seconds
    by_instruction[event["name"]] += seconds
    if kind != "matmuls":
      by_source[instruction["source"]] += seconds
  return by_kind, dict(by_instruction), dict(by_source)


def trace_events(trace_dir: str) -> list[dict]:
  paths = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*",
                                 "*.trace.json.gz"))
  if not paths:
    raise SystemExit(f"jax.profiler wrote no trace into {trace_dir}")
  with gzip.open(paths[0], "rt", encoding="utf-8") as trace:
    return json.load(trace)["traceEvents"]


def profile(config, steps: int, top: int) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  if jax.default_backend() != "cpu":
    raise SystemExit("this script profiles XLA:CPU; this JAX runs on "
                     f"{jax.default_backend()}")
  compiled, state, batch, step_rng, _, _ = benchmark.compiled_step(config)
  state, _ = compiled(state, batch, step_rng)  # first-run work out of it
  jax.block_until_ready(state)
  options = jax.profiler.ProfileOptions()
  options.python_tracer_level = 0  # Python's events would crowd out XLA's
  times = []
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, profiler_options=options):
      for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, step_rng)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    events = trace_events(trace_dir)
  instructions = entry_instructions(compiled.as_text())
  by_kind, by_instruction, by_source = seconds_by_kind(events, instructions,
                                                       steps)
  if not by_instruction:
    raise SystemExit("the trace holds no operation of the step; XLA:CPU "
                     "did not trace them "
                     "(--xla_cpu_enable_xprof_traceme)")
  total = sum(by_kind.values())
  slowest = sorted(by_instruction.items(), key=lambda item: -item[1])[:top]
  return {
      **tpu_estimate.describe(config),
      "traced_steps": steps,
      "step_s_median": statistics.median(times),
      "seconds_per_step": by_kind,
      "shares": {kind: seconds / total for kind, seconds in by_kind.items()},
      "state_copy_gb_per_step": sum(
          i["bytes"] for i in instructions.values()
          if kind_of(i, instructions) == "copies of the train state") / 1e9,
      "slowest_ms_per_step": {
          f"{name} ({instructions[name]['opcode']})": seconds * 1e3
          for name, seconds in slowest},
      "not_matmuls_ms_per_step_by_source": {
          source: seconds * 1e3 for source, seconds in
          sorted(by_source.items(), key=lambda item: -item[1])[:top]},
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  os.environ["XLA_FLAGS"] = " ".join(filter(None, (
      os.environ.get("XLA_FLAGS"), "--xla_cpu_enable_xprof_traceme=true")))
  result = profile(FLAGS.config, FLAGS.steps, FLAGS.top)
  print(f"step: {result['step_s_median']:.2f} s (median of "
        f"{result['traced_steps']} traced steps)", file=sys.stderr)
  for kind in KINDS:
    print(f"{kind:>28}: {result['seconds_per_step'][kind]:6.3f} "
          f"s/step ({result['shares'][kind]:.1%})", file=sys.stderr)
  print(f"train state copied per step: "
        f"{result['state_copy_gb_per_step']:.2f} GB", file=sys.stderr)
  print("operations other than matmuls, by what made them:", file=sys.stderr)
  for source, ms in result["not_matmuls_ms_per_step_by_source"].items():
    print(f"  {ms:7.1f} ms/step  {source}", file=sys.stderr)
  print(json.dumps(result))


if __name__ == "__main__":
  cli.run_absl(main)
