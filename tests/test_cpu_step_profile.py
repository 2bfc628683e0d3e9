import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import cpu_step_profile  # pylint: disable=g-import-not-at-top,wrong-import-position

# The shape of XLA:CPU's optimized HLO (compiled.as_text()), cut down: a
# nested computation whose names must not count, then the ENTRY.
HLO = """HloModule jit__fun, input_output_alias={ {0}: (0, {}, may-alias) }

%fused_computation (param_0: f32[4,8]) -> f32[4,8] {
  %param_0 = f32[4,8]{1,0} parameter(0)
  ROOT %inner.1 = f32[4,8]{1,0} add(%param_0, %param_0)
}

ENTRY %main.9 (flat_args_0_.1: f32[1,8,16], flat_args_1_.1: f32[1,4,8]) -> f32[1,8,16] {
  %flat_args_0_.1 = f32[1,8,16]{2,1,0} parameter(0), sharding={replicated}
  %flat_args_1_.1 = f32[1,4,8]{2,1,0} parameter(1), sharding={replicated}
  %copy.3 = f32[1,8,16]{2,1,0} copy(%flat_args_0_.1)
  %bitcast.1 = f32[4,8]{1,0} bitcast(%flat_args_1_.1)
  %ynn_fusion.2 = f32[4,16]{1,0} fusion(%bitcast.1, %copy.3), kind=kCustom, calls=%fused_computation.2, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  %dot.4 = bf16[8,16]{1,0} dot(%bitcast.1, %ynn_fusion.2), lhs_contracting_dims={0}
  %copy.5 = f32[4,16]{1,0} copy(%ynn_fusion.2), metadata={op_name="jit(_fun)/jvp(MAE)/MAE.decode/decoder/transformer/blocks_3/norm1/mul"}
  %add_fusion.7 = f32[4,16]{1,0} fusion(%copy.5), kind=kLoop, calls=%fused_computation.3, metadata={op_name="jit(_fun)/jvp(MAE)/MAE.decode/decoder/transformer/blocks_0/norm1/mul"}
  ROOT %add_fusion.6 = f32[1,8,16]{2,1,0} fusion(%copy.3, %dot.4), kind=kLoop, calls=%fused_computation, metadata={op_name="jit(_fun)/add" stack_frame_id=3}
}
"""


def test_the_entrys_instructions_are_read_with_their_operands_and_bytes():
  found = cpu_step_profile.entry_instructions(HLO)
  assert "inner.1" not in found and "param_0" not in found
  assert found["copy.3"]["operands"] == ["flat_args_0_.1"]
  assert found["copy.3"]["bytes"] == 8 * 16 * 4
  assert found["dot.4"]["bytes"] == 8 * 16 * 2
  assert found["ynn_fusion.2"]["fusion_kind"] == "__ynn_fusion"
  assert found["flat_args_1_.1"]["opcode"] == "parameter"


def test_operations_are_sorted_into_kinds():
  found = cpu_step_profile.entry_instructions(HLO)
  kinds = {name: cpu_step_profile.kind_of(found[name], found)
           for name in ("copy.3", "ynn_fusion.2", "dot.4", "copy.5",
                        "add_fusion.6")}
  assert kinds == {"copy.3": "copies of the train state",
                   "ynn_fusion.2": "matmuls", "dot.4": "matmuls",
                   "copy.5": "other copies", "add_fusion.6": "everything else"}
  assert found["add_fusion.6"]["source"] == "add"


def test_seconds_are_summed_per_kind_and_per_step():
  found = cpu_step_profile.entry_instructions(HLO)
  events = [{"ph": "X", "name": "ynn_fusion.2", "dur": 3e6},
            {"ph": "X", "name": "ynn_fusion.2", "dur": 1e6},
            {"ph": "X", "name": "copy.3", "dur": 2e6},
            {"ph": "X", "name": "copy.5", "dur": 1e6},
            {"ph": "X", "name": "add_fusion.7", "dur": 3e6},
            {"ph": "X", "name": "add_fusion.6", "dur": 4e6},
            {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 9e6},
            {"ph": "M", "name": "copy.3"}]
  by_kind, by_instruction, by_source = cpu_step_profile.seconds_by_kind(
      events, found, steps=2)
  assert by_kind == {"matmuls": 2.0, "copies of the train state": 1.0,
                     "other copies": 0.5, "everything else": 3.5}
  assert by_instruction == {"ynn_fusion.2": 2.0, "copy.3": 1.0,
                            "copy.5": 0.5, "add_fusion.7": 1.5,
                            "add_fusion.6": 2.0}
  # Not matmuls, by source: two blocks' operations add up, the jit prefix
  # goes, and what has no op_name says so.
  assert by_source == {
      "(no op_name: copies XLA inserted)": 1.0,
      "jvp(MAE)/MAE.decode/decoder/transformer/blocks/norm1/mul": 2.0,
      "add": 2.0}


def test_the_demo_step_is_profiled():
  done = subprocess.run(
      [sys.executable, "benchmarks/cpu_step_profile.py",
       "--config=configs/demo.py", "--steps=1", "--top=3"],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result["seconds_per_step"]["matmuls"] > 0
  assert sum(result["shares"].values()) == pytest.approx(1.0)
  assert len(result["slowest_ms_per_step"]) == 3
  assert 0 < len(result["not_matmuls_ms_per_step_by_source"]) <= 3
  assert "matmuls:" in done.stderr


def test_zero_steps_is_refused():
  done = subprocess.run(
      [sys.executable, "benchmarks/cpu_step_profile.py",
       "--config=configs/demo.py", "--steps=0"],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode != 0
  assert "cpu_step_profile.py: error: flag --steps=0" in done.stderr
  assert "Traceback" not in done.stderr
