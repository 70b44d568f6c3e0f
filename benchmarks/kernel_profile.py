"""GPU time of a profiled train step by kernel kind (matmul, attention, fused pointwise, ...): where the step's
time goes. Used by benchmarks/train_step.py --profile."""
from __future__ import annotations


# First match wins. Inductor names a fused kernel after the ops it came from, so a pointwise kernel next to
# attention can carry "attention" in its name: triton_poi/red/per go first; flex_attention is a template (triton_tem).
KERNEL_KINDS = (("fused pointwise (triton_poi)", ("triton_poi",)),
                ("fused reduction (triton_red/per)", ("triton_red", "triton_per")),
                ("attention", ("flex_attention", "flash", "fmha", "sdpa", "attention", "cudnn::fusion")),
                ("matmul", ("nvjet", "gemm", "cutlass", "xmma", "triton_tem", "triton_mm", "cublas", "splitk")),
                ("copies/memset", ("memcpy", "memset", "copy")),
                ("optimizer/other", ("",)))


def device_kernels(evs, annotations: set[str]) -> list:
    """The GPU kernels alone. Annotated ranges ("## Call CompiledFxGraph", "Optimizer.step#AdamW.step") also
    carry the device time of the kernels inside them, host-side and as a GPU-side copy with no host time, and
    would count it twice."""
    return [e for e in evs if e.self_device_time_total > 0 and e.self_cpu_time_total == 0
            and e.key not in annotations and not e.key.startswith("## ")]


def kernel_breakdown(evs, annotations: set[str], steps: int) -> None:
    """GPU time per step by kernel kind, and the costliest kernels of each kind: where the step's time goes."""
    by_kind: dict[str, list] = {}
    for e in sorted(device_kernels(evs, annotations), key=lambda e: -e.self_device_time_total):
        name = e.key.lower()
        by_kind.setdefault(next(k for k, pats in KERNEL_KINDS if any(p in name for p in pats)), []).append(e)
    ms = {k: sum(e.self_device_time_total for e in v) / steps / 1e3 for k, v in by_kind.items()}
    print("# GPU time per step by kernel kind: " + ", ".join(f"{k} {ms[k]:.2f} ms" for k in sorted(ms, key=ms.get,
                                                                                                  reverse=True)))
    for kind in sorted(ms, key=ms.get, reverse=True):
        print(f"# {kind}: {ms[kind]:.2f} ms/step in {len(by_kind[kind])} kernels; costliest:")
        for e in by_kind[kind][:6]:
            print(f"#   {e.self_device_time_total / steps / 1e3:7.3f} ms/step {e.count // steps:5d} calls/step  "
                  f"{e.key[:110]}")


def _union_us(spans: list[tuple[float, float]]) -> float:
    """Total length of the union of [start, end) spans."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(spans):
        if e > end:
            total += e - max(s, end)
            end = e
    return total


def step_split(kernels: list[tuple[str, float, float]], wall_us: float, steps: int) -> dict[str, float]:
    """A data-parallel step's wall time split three ways, ms per step, from its GPU kernels (name, start, end in us):
    compute (any non-NCCL kernel running), all-reduce (only NCCL running: the communication compute did not hide)
    and idle (no kernel running); `allreduce_total_ms` is all NCCL time, hidden or not."""
    comm = [(s, e) for n, s, e in kernels if "nccl" in n.lower()]
    comp = [(s, e) for n, s, e in kernels if "nccl" not in n.lower()]
    busy, compute = _union_us(comm + comp), _union_us(comp)
    return {"compute_ms": compute / steps / 1e3, "allreduce_ms": (busy - compute) / steps / 1e3,
            "idle_ms": max(wall_us - busy, 0.0) / steps / 1e3, "allreduce_total_ms": _union_us(comm) / steps / 1e3}
