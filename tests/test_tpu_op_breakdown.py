import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import tpu_op_breakdown  # pylint: disable=g-import-not-at-top,wrong-import-position
from test_tpu_estimate import needs_libtpu  # pylint: disable=g-import-not-at-top,wrong-import-position

ENCODER = "jit(per_device)/shard_map/jvp(MAE)/MAE.encode/encoder.transform/transformer/blocks_3"
DECODER_BACKWARD = ("jit(per_device)/shard_map/transpose(jvp(MAE))/MAE.decode/"
                    "decoder/transformer/blocks_0")


@pytest.mark.parametrize("op_name,is_matmul,group", [
    ("jit(per_device)/shard_map/reduce_sum", False,
     tpu_op_breakdown.OUTSIDE_THE_MODEL),
    ("", False, tpu_op_breakdown.OUTSIDE_THE_MODEL),
    ("jit(per_device)/shard_map/jvp(MAE)/MAE.loss/reduce_sum", False,
     tpu_op_breakdown.AROUND_THE_BLOCKS),
    (ENCODER + "/attn/cond/branch_1_fun/bhqd,bhkd->bhqk/dot_general", True,
     "encoder attention: QK and PV products"),
    (ENCODER + "/attn/cond/branch_1_fun/bnd,dhe->bhne/dot_general", True,
     "encoder attention: projections to and from the heads"),
    (ENCODER + "/attn/cond/branch_1_fun/reduce_sum", False,
     "encoder attention: softmax and other"),
    (DECODER_BACKWARD + "/mlp/fc2/cond/branch_1_fun/dot_general", True,
     "decoder MLP: products (GELU fused in)"),
    (DECODER_BACKWARD + "/norm1/add_any", False, "decoder LayerNorm"),
    (DECODER_BACKWARD + "/add", False, "decoder residual adds and other"),
    ("jit(per_device)/shard_map/jvp(CAE)/regressor/blocks_2/cross_attn/"
     "bhqd,bhkd->bhqk/dot_general", True,
     "regressor attention: QK and PV products"),
])
def test_operations_are_grouped_by_the_module_that_made_them(
    op_name, is_matmul, group):
  assert tpu_op_breakdown.group_of(op_name, is_matmul) == group


def _op(name, opcode, op_name, cycles, calls=None):
  called = f", calls=%{calls}" if calls else ""
  return (f'  %{name} = bf16[8,128]{{1,0}} {opcode}(%p){called}, '
          f'metadata={{op_name="{op_name}"}}, backend_config={{"window_config":'
          f'{{"estimated_cycles":"{cycles}"}}}}')


HLO = "\n".join([
    "%fused_dot (a: bf16[8,128]) -> bf16[8,128] {",
    "  %a = bf16[8,128]{1,0} parameter(0)",
    "  ROOT %c = bf16[8,128]{1,0} convolution(%a, %a), dim_labels=bf_io->bf",
    "}",
    "",
    "%fused_softmax (a: bf16[8,128]) -> bf16[8,128] {",
    "  ROOT %a = bf16[8,128]{1,0} parameter(0)",
    "}",
    "",
    "ENTRY %main (p: bf16[8,128]) -> bf16[8,128] {",
    "  %p = bf16[8,128]{1,0} parameter(0)",
    _op("f1", "fusion", ENCODER + "/attn/bhqk,bhkd->bhqd/dot_general", 300,
        "fused_dot"),
    _op("f2", "fusion", ENCODER + "/attn/bhqk,bhkd->bhqd/exp", 100,
        "fused_softmax"),
    _op("f3", "fusion", ENCODER + "/attn/bhqd,bhkd->bhqk/dot_general", 500,
        "fused_dot"),
    _op("r", "reduce", "jit(per_device)/shard_map/reduce_sum", 100),
    # Collectives carry no estimate and are left out.
    '  ROOT %ar = bf16[8,128]{1,0} all-reduce(%p), to_apply=%fused_softmax',
    "}",
])


def test_cycles_are_summed_by_group_and_shares_sorted():
  groups = tpu_op_breakdown.cycles_by_group(HLO)
  assert groups == {"encoder attention: QK and PV products": 800,
                    "encoder attention: softmax and other": 100,
                    tpu_op_breakdown.OUTSIDE_THE_MODEL: 100}
  shares = tpu_op_breakdown.shares(groups)
  assert list(shares.values()) == [0.8, 0.1, 0.1]
  assert next(iter(shares)) == "encoder attention: QK and PV products"


def test_a_dump_without_an_entry_computation_is_refused():
  with pytest.raises(ValueError, match="no ENTRY"):
    tpu_op_breakdown.cycles_by_group("%f (a: f32[]) -> f32[] {\n}\n")


def test_a_missing_dump_says_what_is_needed(tmp_path):
  with pytest.raises(SystemExit, match="need libtpu 0.0.42"):
    tpu_op_breakdown.step_dump(str(tmp_path))


@needs_libtpu
def test_the_demo_steps_shares_come_from_its_compiled_step():
  env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
  done = subprocess.run(
      [sys.executable, "benchmarks/tpu_op_breakdown.py",
       "--config=configs/demo.py", "--topology=v3-8"], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  shares = result["op_shares"]
  assert sum(shares.values()) == pytest.approx(1.0)
  assert result["estimated_step_s"] > 0
  for part in ("encoder MLP: products (GELU fused in)",
               "decoder attention: QK and PV products",
               tpu_op_breakdown.OUTSIDE_THE_MODEL):
    assert shares[part] > 0, part
