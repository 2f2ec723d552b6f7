"""precision: the "auto" dtype policy (GPU, CPU flags and probe replaced by fakes), CPU flags from
cpuinfo, the real probe once, and a resumed run keeping its saved policy."""

import json
import math
import re

import keras
import numpy as np
import pytest
from helpers import tiny_datasets

import model as unet
import precision
import training

INTEL_AMX = "fpu vme avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"
AMD_ZEN4 = "fpu vme avx512f avx512_bf16 avx512_vnni"
OLDER_X86 = "fpu vme sse4_2 avx2 fma"


def _never(*args):
    raise AssertionError("must not be called")


def _fakes(gpus=(), flags="", speedup=None):
    return {
        "gpu_query": lambda: list(gpus),
        "cpu_flags": lambda: flags.split(),
        "probe": _never if speedup is None else (lambda: speedup),
    }


@pytest.mark.parametrize(
    ("fakes", "policy", "reason"),
    [
        (
            _fakes(gpus=[(8, 0)]),
            "mixed_float16",
            r"1 GPU\(s\), lowest compute capability 8\.0 \(tensor cores",
        ),
        (
            _fakes(gpus=[(7, 0)], flags=INTEL_AMX),
            "mixed_float16",
            r"capability 7\.0 \(tensor cores, >= 7\.0\)",
        ),
        (_fakes(gpus=[(6, 1)], flags=INTEL_AMX), "float32", r"capability 6\.1, below 7\.0: no tensor cores"),
        (_fakes(gpus=[(8, 6), (6, 0)]), "float32", r"2 GPU\(s\), lowest compute capability 6\.0"),
        (
            _fakes(flags=OLDER_X86),
            "float32",
            r"no GPU, and the CPU has no native bfloat16 \(none of amx_bf16",
        ),
        (_fakes(flags=""), "float32", r"no native bfloat16"),
        (_fakes(flags=INTEL_AMX, speedup=2.5), "mixed_bfloat16", r"has amx_bf16, avx512_bf16; .* at 2\.50x"),
        (_fakes(flags=AMD_ZEN4, speedup=0.7), "float32", r"has avx512_bf16; .* at 0\.70x .* under the 1\.1x"),
        (_fakes(flags=AMD_ZEN4, speedup=1.1), "mixed_bfloat16", r"at 1\.10x float32's speed$"),
        (_fakes(flags=AMD_ZEN4, speedup=1.09), "float32", r"under the 1\.1x needed"),
    ],
)
def test_auto_chooses_by_gpu_then_cpu_flags_then_probe(fakes, policy, reason):
    choice = precision.choose_dtype_policy(**fakes)
    assert choice.policy == policy
    assert choice.reason.startswith("auto: ")
    assert "\n" not in choice.reason
    assert re.search(reason, choice.reason), choice.reason


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {INTEL_AMX}\n\nprocessor\t: 1\nflags\t\t: fpu\n"
    )
    assert precision.read_cpu_flags(cpuinfo) == frozenset(INTEL_AMX.split())
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")  # ARM's name for the line
    assert precision.read_cpu_flags(cpuinfo) == {"fp", "asimd", "bf16"}
    assert precision.read_cpu_flags(tmp_path / "missing") == frozenset()
    cpuinfo.write_text("processor\t: 0\n")
    assert precision.read_cpu_flags(cpuinfo) == frozenset()


def test_the_real_probe_returns_a_speed_ratio():
    keras.backend.clear_session()
    speedup = precision.probe_bfloat16_speedup((32, 32, 1), base_filters=4, depth=2, timed_steps=1)
    assert math.isfinite(speedup) and speedup > 0
    with pytest.raises(ValueError, match="Expected timed_steps >= 1; received 0"):
        precision.probe_bfloat16_speedup(timed_steps=0)


def test_resolve_passes_explicit_policies_and_checks_them(tmp_path):
    assert precision.resolve_dtype_policy("float32", tmp_path, **_fakes()) == ("float32", "given explicitly")
    assert precision.resolve_dtype_policy("auto", None, **_fakes(flags=OLDER_X86)).policy == "float32"
    with pytest.raises(
        ValueError,
        match=r"Unknown dtype_policy 'bfloat16'; expected one of \('auto', 'float32', 'mixed_bfloat16', "
        r"'mixed_float16'\)",
    ):
        precision.resolve_dtype_policy("bfloat16")
    (tmp_path / training.STATE_JSON).write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        precision.resolve_dtype_policy("auto", tmp_path)
    (tmp_path / training.STATE_JSON).write_text(json.dumps({"dtype_policy": "float64"}))
    with pytest.raises(ValueError, match=r"holds dtype_policy 'float64'; expected one of \('float32'"):
        precision.resolve_dtype_policy("auto", tmp_path)


def test_a_resumed_run_keeps_its_saved_policy_even_where_auto_would_now_choose_another(tmp_path):
    _, _, train, val = tiny_datasets()
    run = tmp_path / "run"
    first = precision.resolve_dtype_policy("auto", run, **_fakes(flags=AMD_ZEN4, speedup=0.8))
    assert first.policy == "float32"
    keras.backend.clear_session()
    training.set_seeds(0)
    model = unet.build_unet((32, 32, 1), 4, 2, dtype_policy=first.policy)
    options = {"epochs": 2, "lr_schedule": "plateau", "progress": "none"}
    training.train_model(model, train, val, run, dtype_policy_reason=first.reason, **{**options, "epochs": 1})
    state = json.loads((run / training.STATE_JSON).read_text())
    assert (state["dtype_policy"], state["dtype_policy_reason"]) == tuple(first)

    # The same run on a machine where "auto" would choose bfloat16: the run keeps float32.
    choice = precision.resolve_dtype_policy("auto", run, **_fakes(flags=INTEL_AMX, speedup=3.0))
    assert choice.policy == "float32"
    assert choice.reason == f"kept from the run being resumed (chosen then: {first.reason})"
    with pytest.raises(ValueError, match=r"trained with dtype_policy 'float32'; resume it with 'auto' or"):
        precision.resolve_dtype_policy("mixed_bfloat16", run)
    keras.backend.clear_session()
    training.set_seeds(0)
    resumed, history = training.train_model(
        unet.build_unet((32, 32, 1), 4, 2, dtype_policy=choice.policy), train, val, run, **options
    )
    assert list(history["epoch"]) == [1, 2] and np.isfinite(history["loss"]).all()
    state = json.loads((run / training.STATE_JSON).read_text())
    assert (state["dtype_policy"], state["dtype_policy_reason"]) == tuple(first)  # the first call's reason

    # A model of another policy is refused by train_model itself.
    keras.backend.clear_session()
    bf16 = unet.build_unet((32, 32, 1), 4, 2, dtype_policy="mixed_bfloat16")
    with pytest.raises(
        ValueError, match=r"trained with dtype_policy 'float32', the model given has 'mixed_bfloat16'"
    ):
        training.train_model(bf16, train, val, run, **{**options, "epochs": 3})
