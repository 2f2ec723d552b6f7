"""The dtype policy of a run: ``"auto"`` chooses per machine, a resumed run keeps its own.

`choose_dtype_policy` decides, in this order:

1. a CUDA GPU whose compute capability is at least ``TENSOR_CORE_CAPABILITY`` (7.0, Volta: tensor
   cores) gives ``"mixed_float16"``; an older GPU gives ``"float32"``;
2. a CPU without native bfloat16 matrix instructions (none of ``NATIVE_BFLOAT16_FLAGS``, i.e.
   ``amx_bf16`` or ``avx512_bf16``, among the ``flags`` of ``/proc/cpuinfo``) gives ``"float32"``;
3. otherwise a short probe times a few training steps of a small U-Net in both precisions
   (`probe_bfloat16_speedup`, a few seconds, mostly tracing): ``"mixed_bfloat16"`` when bfloat16 is at least
   ``MIN_BFLOAT16_SPEEDUP`` times as fast, else ``"float32"`` (native instructions do not make
   bfloat16 faster by themselves: on some CPUs that have them the casts cost more than they save).

Every decision comes with a one-line reason, to print and to store with the run
(``train_state.json``, ``results.json``). The three sources (GPU query, CPU flags, probe) are
arguments, so the decision can be tested with fakes.

`resolve_dtype_policy` is what a notebook or script calls before building the model: it turns
``"auto"`` into a policy, passes an explicit one through, and for a run folder that already holds
a run returns that run's policy, so a resumed run never switches precision half-way (its weights
and optimizer state were made with it). Call it before seeding and building the model: the probe
builds models of its own.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np

import model
import training

DTYPE_POLICY_CHOICES = ("auto", *model.DTYPE_POLICIES)
NATIVE_BFLOAT16_FLAGS = ("amx_bf16", "avx512_bf16")
TENSOR_CORE_CAPABILITY = (7, 0)
# bfloat16 must beat float32 by this factor in the probe: a tie (within the probe's noise) keeps
# float32, the exact and better-tested path.
MIN_BFLOAT16_SPEEDUP = 1.1
CPUINFO = "/proc/cpuinfo"
# The probe's model and batch: the default U-Net's layer types and channel counts at a size
# that keeps the probe to a second or two.
PROBE_SHAPE = (64, 64, 1)
PROBE_BASE_FILTERS = 16
PROBE_DEPTH = 3
PROBE_BATCH = 4
PROBE_LEARNING_RATE = 1e-3
PROBE_WARMUP_STEPS = 1
PROBE_TIMED_STEPS = 5


class PolicyChoice(NamedTuple):
    """A dtype policy and why it was chosen, e.g. ``("float32", "auto: no native bfloat16 ...")``."""

    policy: str
    reason: str


def read_cpu_flags(path: str | os.PathLike = CPUINFO) -> frozenset[str]:
    """Returns the CPU feature flags listed in ``/proc/cpuinfo`` (its first ``flags`` line).

    Args:
        path: the cpuinfo file.

    Returns:
        The flags, e.g. ``{"avx512f", "avx512_bf16", ...}``; empty where the file does not exist
        (not Linux) or lists no flags (e.g. ARM lists ``Features``, which are read instead).
    """
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def gpu_compute_capabilities() -> list[tuple[int, int]]:
    """Returns the CUDA compute capability of each GPU TensorFlow sees, e.g. ``[(8, 0)]``; ``[]`` without one."""
    import tensorflow as tf

    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        capabilities.append(tuple(capability) if capability else (0, 0))
    return capabilities


def _probe_step(net: keras.Model) -> Callable:
    """A compiled training step of `net`: forward, binary cross-entropy, gradients, an SGD update.

    Lighter to trace than Keras's ``train_on_batch`` (no optimizer slots, metrics or loss
    tracking, which cost the same in both precisions), so the probe stays short.
    """
    import tensorflow as tf

    @tf.function
    def step(images, masks):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.binary_crossentropy(masks, net(images, training=True)))
        for variable, gradient in zip(net.trainable_variables, tape.gradient(loss, net.trainable_variables)):
            variable.assign_sub(PROBE_LEARNING_RATE * gradient)
        return loss

    return step


def probe_bfloat16_speedup(
    input_shape: Sequence[int] = PROBE_SHAPE,
    base_filters: int = PROBE_BASE_FILTERS,
    depth: int = PROBE_DEPTH,
    batch_size: int = PROBE_BATCH,
    warmup_steps: int = PROBE_WARMUP_STEPS,
    timed_steps: int = PROBE_TIMED_STEPS,
) -> float:
    """Times training steps of a small U-Net in float32 and in mixed_bfloat16; returns the speed ratio.

    Both models (`model.build_unet` with fused batch norm and a float32 head; by default
    `PROBE_SHAPE`, `PROBE_BASE_FILTERS`, `PROBE_DEPTH`, batch `PROBE_BATCH`: the default
    U-Net's layers at a size that keeps the probe short; pass a run's own configuration to
    probe it instead) train with binary cross-entropy and plain SGD in a compiled step
    (`_probe_step`): the forward and backward passes, where the precisions differ. After
    `warmup_steps` untimed steps each (tracing), their timed steps alternate, so that a load
    change on a shared machine touches both alike, and the medians are compared. Builds models,
    so it draws from Keras's random state: call it before seeding the run.

    Args:
        input_shape: ``(height, width, channels)`` of the probe's images (random, float32 in [0, 1]).
        base_filters: the probe U-Net's first-stage filters.
        depth: its number of poolings.
        batch_size: images per step.
        warmup_steps: untimed steps per precision (the first traces the step).
        timed_steps: timed steps per precision (>= 1).

    Returns:
        ``float32 seconds per step / bfloat16 seconds per step``: above 1 when bfloat16 is faster.
    """
    if timed_steps < 1:
        raise ValueError(f"Expected timed_steps >= 1; received {timed_steps}.")
    images = np.random.default_rng(0).random((batch_size, *input_shape), dtype=np.float32)
    masks = (images > 0.5).astype(np.float32)
    steps = {}
    for policy in ("float32", "mixed_bfloat16"):
        net = model.build_unet(tuple(input_shape), base_filters, depth, dtype_policy=policy)
        steps[policy] = _probe_step(net)
        for _ in range(warmup_steps):
            steps[policy](images, masks).numpy()
    seconds = {policy: [] for policy in steps}
    for _ in range(timed_steps):
        for policy, step in steps.items():
            start = time.perf_counter()
            step(images, masks).numpy()  # .numpy() waits for the step to finish
            seconds[policy].append(time.perf_counter() - start)
    return statistics.median(seconds["float32"]) / statistics.median(seconds["mixed_bfloat16"])


def choose_dtype_policy(
    gpu_query: Callable[[], Sequence[tuple[int, int]]] = gpu_compute_capabilities,
    cpu_flags: Callable[[], Iterable[str]] = read_cpu_flags,
    probe: Callable[[], float] = probe_bfloat16_speedup,
) -> PolicyChoice:
    """Chooses the dtype policy for this machine (the rules in the module docstring).

    Args:
        gpu_query: returns the compute capability ``(major, minor)`` of each GPU; ``[]`` for none.
        cpu_flags: returns the CPU's feature flags.
        probe: returns how many times faster a bfloat16 training step is than a float32 one;
            called only on a CPU with native bfloat16.

    Returns:
        `PolicyChoice`: the policy, one of ``"float32"``, ``"mixed_bfloat16"``,
        ``"mixed_float16"``, and a one-line reason starting ``"auto: "``.
    """
    capabilities = list(gpu_query())
    if capabilities:
        lowest = min(capabilities)
        found = f"{len(capabilities)} GPU(s), lowest compute capability {lowest[0]}.{lowest[1]}"
        if lowest >= TENSOR_CORE_CAPABILITY:
            return PolicyChoice("mixed_float16", f"auto: {found} (tensor cores, >= 7.0)")
        return PolicyChoice("float32", f"auto: {found}, below 7.0: no tensor cores")
    native = sorted(set(NATIVE_BFLOAT16_FLAGS) & set(cpu_flags()))
    if not native:
        return PolicyChoice(
            "float32",
            f"auto: no GPU, and the CPU has no native bfloat16 (none of {', '.join(NATIVE_BFLOAT16_FLAGS)})",
        )
    speedup = float(probe())
    measured = (
        f"the CPU has {', '.join(native)}; a probe ran bfloat16 training steps at {speedup:.2f}x "
        f"float32's speed"
    )
    if speedup >= MIN_BFLOAT16_SPEEDUP:
        return PolicyChoice("mixed_bfloat16", f"auto: {measured}")
    return PolicyChoice("float32", f"auto: {measured}, under the {MIN_BFLOAT16_SPEEDUP}x needed")


def saved_dtype_policy(run_dir: str | os.PathLike) -> PolicyChoice | None:
    """Returns the policy and reason stored in a run folder's ``train_state.json``, or None without one.

    Raises:
        ValueError: the file is not JSON, or names no known policy.
    """
    path = Path(run_dir) / training.STATE_JSON
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"'{path}' is not valid JSON ({error}); cannot read the run's dtype policy."
        ) from error
    policy = state.get("dtype_policy") if isinstance(state, dict) else None
    if policy not in model.DTYPE_POLICIES:
        raise ValueError(f"'{path}' holds dtype_policy {policy!r}; expected one of {model.DTYPE_POLICIES}.")
    return PolicyChoice(policy, str(state.get("dtype_policy_reason", "not recorded")))


def resolve_dtype_policy(
    dtype_policy: str = "auto", run_dir: str | os.PathLike | None = None, **sources
) -> PolicyChoice:
    """The policy to build a run's model with: the saved run's, else `dtype_policy` resolved.

    Args:
        dtype_policy: one of `DTYPE_POLICY_CHOICES`: ``"auto"`` (`choose_dtype_policy`) or a
            policy to use as given.
        run_dir: the run folder; when it holds a run (``train_state.json``), that run's policy
            is returned, whatever ``"auto"`` would choose now.
        **sources: ``gpu_query``, ``cpu_flags``, ``probe``, passed to `choose_dtype_policy`.

    Returns:
        `PolicyChoice` (policy, reason). The reason says whether it was kept from the saved run,
        chosen automatically (and why), or given.

    Raises:
        ValueError: an unknown `dtype_policy`; an explicit policy other than the saved run's
            (resume with ``"auto"`` or the run's policy, or use another run folder).
    """
    if dtype_policy not in DTYPE_POLICY_CHOICES:
        raise ValueError(f"Unknown dtype_policy {dtype_policy!r}; expected one of {DTYPE_POLICY_CHOICES}.")
    saved = None if run_dir is None else saved_dtype_policy(run_dir)
    if saved is not None:
        if dtype_policy not in ("auto", saved.policy):
            raise ValueError(
                f"The run in '{run_dir}' was trained with dtype_policy {saved.policy!r}; resume it with "
                f"'auto' or {saved.policy!r}, or use another run folder for {dtype_policy!r}."
            )
        return PolicyChoice(saved.policy, f"kept from the run being resumed (chosen then: {saved.reason})")
    if dtype_policy == "auto":
        return choose_dtype_policy(**sources)
    return PolicyChoice(dtype_policy, "given explicitly")
