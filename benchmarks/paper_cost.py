"""GPU-hours and decode core-hours of the paper's comparison, planned without images, today's defaults vs
the new ones.

The comparison: the 11 few-shot datasets x 1/2/4/8/16 shots x seeds 1-3 x zeroshot, linear_probe, mask, coop,
coop+mask, clip_adapter, tip_adapter_f, tip_adapter_f+mask (1,320 trials) on OpenAI ViT-B/16, each dataset
with its real class count and test size (reference datasets.md section 1): K x classes train images, min(K, 4)
x classes val images. Every trial is planned by ``bench.cost.plan_trial`` from the work its methods declare
(``Method.plan_work``) — the counts a trial's cost ledger records when it runs (tests/test_precision.py
checks them against real trials) — in order with one
shared feature and stage cache, so features and masks reused across trials count once.

* today: ``--precision fp32``, every test image timed (``--infer-images`` all), every pass decoding every
  image it reads (``PathSettings(decode_once=False, test_crops=False)``: loaders with workers kept nothing
  decoded, and every test pass decoded its split);
* new: the defaults on CUDA: bf16, 1,000 test images timed, few-shot images decoded once per trial, a test
  split's crops stored by its first whole pass and read by every later one (bench.loading.TestCrops).

GPU-hours = counted encoder GFLOPs (forward; backward = 2x forward) / achieved TFLOP/s: bf16 at 40 % of the
H200 SXM's 989 TFLOP/s dense, fp32 credited with 100 % of its 67 TFLOP/s (an upper bound on fp32's speed, so
today's hours and the ratio are lower bounds). Per-image GFLOPs: ``torch.utils.flop_counter`` on one 224 px
image through ViT-B/16's image tower (random weights: nothing is downloaded). Decode core-hours: decodes x
the seconds one core takes to decode a 500x375 JPEG (measured here, on a file written by the script).
Only the image encoder is counted (CoOp's text tower and the heads are small beside it).

Run from the repository root (~10 s): ``python benchmarks/paper_cost.py``.
Last lines: ``paper_cost: N GPU-hours`` (new defaults) and ``paper_cost ratio: Rx`` (today's over the new).
"""
from __future__ import annotations

import io
import time

DATASETS = {  # name: (classes, test images), datasets.md section 1
    "imagenet": (1000, 50000), "caltech101": (100, 2465), "oxford_pets": (37, 3669),
    "stanford_cars": (196, 8041), "oxford_flowers": (102, 2463), "food101": (101, 30300),
    "fgvc_aircraft": (100, 3333), "sun397": (397, 19850), "dtd": (47, 1692), "eurosat": (10, 8100),
    "ucf101": (101, 3783),
}
SHOTS, SEEDS = (1, 2, 4, 8, 16), (1, 2, 3)
STACKS = ("zeroshot", "linear_probe", "mask", "coop", "coop+mask", "clip_adapter", "tip_adapter_f",
          "tip_adapter_f+mask")
ACHIEVED_TFLOPS = {"bf16": 0.4 * 989.0, "tf32": 0.4 * 495.0, "fp32": 1.0 * 67.0}


def vit_b16_gflops() -> float:
    import open_clip

    from bench.cost import encoder_gflops

    model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
    return encoder_gflops(model.visual, 224)


def decode_seconds(repeats: int = 50) -> float:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (47, 63, 3)), np.ones((8, 8, 1)))[:375, :500].astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(smooth).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    start = time.perf_counter()
    for _ in range(repeats):
        Image.open(io.BytesIO(data)).convert("RGB")
    return (time.perf_counter() - start) / repeats


def plan(precision: str, infer_images: int | None, decode_once: bool):
    """(Ledger summed over the comparison, images decoded)."""
    from bench.cost import Ledger, PathSettings, Sizes, plan_trial
    from bench.spec import TrialSpec

    total, decoded, done = Ledger(), 0, set()
    for dataset, (classes, test) in DATASETS.items():
        for shots in SHOTS:
            sizes = Sizes(train=shots * classes, val=min(shots, 4) * classes, test=test)
            for seed in SEEDS:
                for stack in STACKS:
                    spec = TrialSpec(run="paper", suite="fewshot11", dataset=dataset, shots=shots, seed=seed,
                                     stack=stack, model="ViT-B-16", pretrained="openai", device="cuda",
                                     precision=precision, infer_images=infer_images)
                    ledger, n = plan_trial(spec, sizes, done,
                                           PathSettings(decode_once=decode_once, test_crops=decode_once))
                    total.forwards.update(ledger.forwards)
                    total.backwards.update(ledger.backwards)
                    decoded += n
    return total, decoded


def main() -> None:
    from bench.plan import CUDA_INFER_IMAGES

    per_image = vit_b16_gflops()
    per_decode = decode_seconds()
    print(f"ViT-B/16 image tower: {per_image:.1f} GFLOPs per image forward; JPEG 500x375 decode: "
          f"{per_decode * 1e3:.2f} ms per image on one core")
    rows = {}
    for name, precision, infer, once in (("today", "fp32", None, False), ("new", "bf16", CUDA_INFER_IMAGES, True)):
        ledger, decoded = plan(precision, infer, once)
        hours = ledger.gflops(per_image) / (ACHIEVED_TFLOPS[precision] * 1e3) / 3600
        rows[name] = hours
        kinds = ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in sorted(ledger.forwards.items()))
        back = ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in sorted(ledger.backwards.items()))
        print(f"{name:>5} ({precision}, timing {'all' if infer is None else infer} test images, "
              f"{'decode once, test crops stored' if once else 'decode every pass'}): forward {kinds}; backward {back}; "
              f"{ledger.gflops(per_image) / 1e9:.2f} EFLOP -> {hours:.1f} GPU-hours; "
              f"{decoded / 1e6:.2f} M decodes -> {decoded * per_decode / 3600:.1f} core-hours")
    print(f"paper_cost: {rows['new']:.1f} GPU-hours")
    print(f"paper_cost ratio: {rows['today'] / rows['new']:.1f}x")


if __name__ == "__main__":
    main()
