"""Top-1 of every stack of the synthetic suite in bf16 (CPU autocast) minus fp32: what ``--precision bf16``
changes in results.

Runs the suite's trials (its datasets, shots, seeds and settings; the paper's 11 stacks) twice in this
process, ``--precision fp32`` and ``--precision bf16``, each with a fresh feature and stage cache, and
prints per stack the difference of its suite-average top-1 and the largest difference on one dataset.
On CPU, autocast runs the encoder's matmuls in bf16 like CUDA's; kernels differ, so this measures the
effect of bf16 rounding, not of a GPU's exact numbers.
Run from the repository root (~10-20 min on 2 cores): ``python benchmarks/precision.py [--datasets a,b]``.
Last line: ``precision max difference: D points`` (the largest |difference| of a stack's suite average).
"""
from __future__ import annotations

import argparse
import tempfile

STACKS = ["zeroshot", "linear_probe", "mask", "coop", "coop+mask", "clip_adapter", "clip_adapter+mask",
          "tip_adapter", "tip_adapter+mask", "tip_adapter_f", "tip_adapter_f+mask"]


def top1s(precision: str, datasets: list[str] | None, stacks: list[str]) -> dict[tuple[str, str], float]:
    from bench.plan import plan_trials
    from bench.suite import load_suite
    from bench.trial import run_trial

    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as results:
        specs = plan_trials(load_suite("synthetic"), run="precision", results=results, methods=stacks,
                            datasets=datasets, cache_dir=cache, precision=precision, infer_images=0)
        out = {}
        for spec in specs:
            out[(spec.stack, spec.dataset)] = run_trial(spec)["top1"]
            print(f"  {precision} {spec.dataset} {spec.stack}: {out[(spec.stack, spec.dataset)]:.2f}", flush=True)
        return out


def main(argv=None) -> float:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", default=None, help="comma list (default: the suite's 8)")
    parser.add_argument("--stacks", default=",".join(STACKS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    datasets = args.datasets.split(",") if args.datasets else None
    stacks = args.stacks.split(",")
    fp32, bf16 = top1s("fp32", datasets, stacks), top1s("bf16", datasets, stacks)
    print(f"{'stack':<20} {'fp32':>7} {'bf16':>7} {'bf16-fp32':>10} {'largest on one dataset':>23}")
    worst = 0.0
    for stack in stacks:
        keys = [k for k in fp32 if k[0] == stack]
        a = sum(fp32[k] for k in keys) / len(keys)
        b = sum(bf16[k] for k in keys) / len(keys)
        cell = max((bf16[k] - fp32[k] for k in keys), key=abs)
        worst = max(worst, abs(b - a))
        print(f"{stack:<20} {a:7.2f} {b:7.2f} {b - a:+10.2f} {cell:+23.2f}")
    print(f"precision max difference: {worst:.2f} points")
    return worst


if __name__ == "__main__":
    main()
