"""Images/s and achieved TFLOP/s of the ``mask`` plugin's training step (R-AMT) and of CoOp's live step on a
CUDA GPU, in each run precision (fp32, tf32, bf16), with MFU against that precision's dense peak.

CoOp's step (``CoopVariant``): the frozen image tower under ``no_grad`` in the precision (as
``TrialContext.encode_images``), then the prompt learner and fp32 text tower, backward and SGD; its model
FLOPs are the image forward only.

Drives the plugin's own step, ``bench.methods.mask.rmt_step`` (teacher forward under ``no_grad`` + one
masked student forward + two ``autograd.grad`` calls + GDR + Adam), exactly as ``MaskTuning.fit`` calls it,
on a randomly initialised ``ViT-B-16-quickgelu`` image tower at 224 px: batch 32 and 256, fp32 and bf16
autocast (``mask.bf16=true``). Variants are timed in interleaved rounds after a warm-up; per-step medians.

FLOPs: the forward FLOPs of one image are counted with ``torch.utils.flop_counter.FlopCounterMode``
(2 per multiply-add; ViT-B/16 at 224 px: ~35 GFLOP, analytically 35.1). "Model" TFLOP/s counts 3x forward per trained image (student forward + backward)
plus 1x forward for the teacher, i.e. 4x forward per image — the usual MFU-style convention. The step
really runs two backward passes through the student (the KL gradient and the task gradient), so the
executed work is larger; the "counted" column gives FlopCounterMode's count of one whole step. "MFU" is the
model TFLOP/s over the GPU's dense peak for the variant's precision (bf16 tensor cores; fp32, or TF32 with
``--tf32``), from NVIDIA's data sheets for the GPUs in ``PEAK_TFLOPS``; ``--peak-tflops BF16,FP32`` gives
them for any other device.

Run from the repository root on a machine with a GPU (takes ~1-2 minutes, must stay under 5):
``python benchmarks/gpu_throughput.py [--batches 32,256] [--steps 6] [--warmup 2] [--tf32]``.
On a machine without CUDA it prints ``gpu_throughput: no CUDA device, skipped`` and exits 0, unless
``--tiny``: the ``tiny`` model at batch 2, one step, on CUDA if present and otherwise on CPU (under CPU bf16
autocast), to check that the script runs.
Last line: ``gpu_throughput speedup: <bf16/fp32 images/s at batch 256>x``.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import torch

from bench.classifier import ZeroShotHead
from bench.methods._masking import select_masked
from bench.methods.mask import MaskTuning, bf16_autocast, rmt_step

SKIP_LINE = "gpu_throughput: no CUDA device, skipped"

# Dense peak TFLOP/s (bf16 tensor core, TF32 tensor core, plain fp32) from NVIDIA's data sheets; the first
# name that occurs in torch.cuda.get_device_name() wins, so more specific names come first.
PEAK_TFLOPS = [
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H100 NVL", {"bf16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    ("H100", {"bf16": 989.0, "tf32": 495.0, "fp32": 67.0}),
    ("H200", {"bf16": 989.0, "tf32": 495.0, "fp32": 67.0}),
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    ("L4", {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("A10", {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2}),
]


def peak_tflops(device_name: str, tf32: bool) -> dict[str, float] | None:
    """{"bf16": peak, "fp32": peak, "tf32": peak} for a GPU named in PEAK_TFLOPS (fp32 = the TF32 peak with
    ``tf32``)."""
    for name, peaks in PEAK_TFLOPS:
        if name.lower() in device_name.lower():
            return {"bf16": peaks["bf16"], "fp32": peaks["tf32" if tf32 else "fp32"], "tf32": peaks["tf32"]}
    return None


def build_tower(model: str, device: str):
    """A randomly initialised image tower (frozen, as the harness hands it to ``mask``), its size and
    output width, the whole CLIP model and its tokenizer."""
    from bench.models import load_model

    clip, _, tokenizer = load_model(model, "none", device)
    clip.requires_grad_(False)
    visual = clip.visual
    size = visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return visual, int(size), int(visual.output_dim), clip, tokenizer


def forward_flops(visual, image_size: int, device: str) -> int:
    """FLOPs (2 per multiply-add) of one image's forward through the tower."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, image_size, image_size, device=device)
    mode = visual.training
    visual.train()  # eval mode under no_grad takes MultiheadAttention's fused path, which the counter misses
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            visual(x)
    finally:
        visual.train(mode)
    return int(counter.get_total_flops())


class Variant:
    """One (batch, precision) setting: its own mask scores and optimiser, as ``MaskTuning.fit`` builds them."""

    kind = "mask"

    def __init__(self, visual, head, batch: int, precision: str, image_size: int, n_classes: int, device: str,
                 cfg=None):
        cfg = cfg or MaskTuning.Config()
        self.visual, self.head, self.batch, self.precision, self.cfg = visual, head, batch, precision, cfg
        self.bf16 = precision == "bf16"
        params = dict(visual.named_parameters())
        names = select_masked(visual, cfg.mlp, cfg.layers, cfg.patch_embed)
        self.scores = {n: torch.full_like(params[n], cfg.init, dtype=torch.float32, requires_grad=True)
                       for n in names}
        self.opt = torch.optim.Adam(self.scores.values(), lr=cfg.lr, weight_decay=0.0)
        self.gen = torch.Generator(device=device).manual_seed(0)
        self.images = torch.randn(batch, 3, image_size, image_size, device=device)
        self.labels = torch.randint(0, n_classes, (batch,), device=device)
        self.autocast = bf16_autocast(torch.device(device)) if self.bf16 else contextlib.nullcontext
        self.times: list[float] = []
        self.error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.kind} batch {self.batch:>3} {self.precision}"

    def step(self) -> None:
        with matmul_precision(self.precision):
            self._step()

    def _step(self) -> None:
        cfg = self.cfg
        rmt_step(self.visual, self.head, self.scores, self.opt, self.images, self.labels,
                 threshold=cfg.threshold, reg_weight=cfg.reg_weight, gdr=cfg.gdr, lam=cfg.gdr_lambda,
                 temperature=cfg.gdr_temperature, generator=self.gen, autocast=self.autocast)

    forward_multiple = 4  # student forward + backward (3x) + teacher forward

    def step_flops(self) -> int:
        """FlopCounterMode's count of one whole step at this batch (both backward passes included)."""
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self.step()
        return int(counter.get_total_flops())

    def release(self) -> None:
        self.images = self.labels = self.scores = self.opt = None


class CoopVariant(Variant):
    """One CoOp step as ``CoOp.fit`` runs it live: the frozen image tower under ``no_grad`` in the run's
    precision (``TrialContext.encode_images``), then the prompt learner + text tower (fp32) with its backward
    and SGD. Model FLOPs count the image forward only (1x per image); the text tower is not counted."""

    kind = "coop"
    forward_multiple = 1

    def __init__(self, clip, tokenizer, batch: int, precision: str, image_size: int, n_classes: int, device: str):
        from bench.methods.coop import CoOpConfig, PromptHead

        self.visual, self.batch, self.precision, self.bf16 = clip.visual, batch, precision, precision == "bf16"
        self.prompts = PromptHead(clip, tokenizer, [f"class {i}" for i in range(n_classes)], CoOpConfig(),
                                  torch.Generator().manual_seed(0)).to(device)
        self.opt = torch.optim.SGD([self.prompts.ctx], lr=0.002, momentum=0.9, weight_decay=5e-4)
        self.images = torch.randn(batch, 3, image_size, image_size, device=device)
        self.labels = torch.randint(0, n_classes, (batch,), device=device)
        self.device = device
        self.times: list[float] = []
        self.error: str | None = None

    def _step(self) -> None:
        from bench.methods._training import optimizer_step
        from bench.precision import autocast

        with torch.no_grad(), autocast(self.device, self.precision):
            feats = self.visual(self.images).float()
        optimizer_step(self.opt, torch.nn.functional.cross_entropy(self.prompts(feats), self.labels))

    def release(self) -> None:
        self.images = self.labels = self.prompts = self.opt = None


@contextlib.contextmanager
def matmul_precision(precision: str):
    """TF32 matmuls for the ``tf32`` variants only (or, with ``--tf32``, for fp32 as well)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    allow = precision == "tf32" or before[0]
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(model: str = "ViT-B-16-quickgelu", batches=(32, 256), precisions=("fp32", "bf16"),
            steps: int = 6, warmup: int = 2, device: str = "cuda", n_classes: int = 100,
            log=print, peaks: dict[str, float] | None = None, kinds=("mask",)) -> list[dict]:
    """Time ``rmt_step`` (kind ``mask``) and CoOp's live step (kind ``coop``) for every (kind, batch,
    precision); returns one dict per variant.

    Keys: kind, batch, precision, step_s (median), images_per_s, model_tflops (mask: 4x forward per image,
    coop: 1x),
    counted_tflops (FlopCounterMode count of the step), mfu (model TFLOP/s / ``peaks[precision]``, None
    without a peak), error (e.g. out of memory; then no numbers).
    """
    torch.manual_seed(0)
    visual, size, dim, clip, tokenizer = build_tower(model, device)
    visual.train()  # as in MaskTuning.fit (the teacher forward switches to eval itself)
    head = ZeroShotHead(torch.nn.functional.normalize(torch.randn(n_classes, dim), dim=-1), 100.0).to(device)
    fwd = forward_flops(visual, size, device)
    log(f"{model} (random init) {size}px: forward {fwd / 1e9:.2f} GFLOP/image, device {device}"
        + (f" ({torch.cuda.get_device_name()})" if torch.device(device).type == "cuda" else ""))
    make = {"mask": lambda b, p: Variant(visual, head, b, p, size, n_classes, device),
            "coop": lambda b, p: CoopVariant(clip, tokenizer, b, p, size, n_classes, device)}
    variants = [make[k](b, p) for k in kinds for b in batches for p in precisions]
    counted = {}
    for v in variants:  # warm-up (kernels, autotuning, allocator), and the executed-FLOP count per step
        try:
            for _ in range(warmup):
                v.step()
            counted[v.label] = v.step_flops()
            _sync(device)
        except torch.cuda.OutOfMemoryError as err:  # pragma: no cover - GPU only
            v.error, _ = f"out of memory ({str(err).splitlines()[0][:80]})", v.release()
            torch.cuda.empty_cache()
    for _ in range(steps):  # interleaved rounds: every variant once per round
        for v in variants:
            if v.error:
                continue
            _sync(device)
            t0 = time.perf_counter()
            v.step()
            _sync(device)
            v.times.append(time.perf_counter() - t0)
    out = []
    for v in variants:
        row = {"kind": v.kind, "batch": v.batch, "precision": v.precision, "error": v.error}
        if not v.error:
            t = statistics.median(v.times)
            model_tflops = v.forward_multiple * fwd * v.batch / t / 1e12
            peak = (peaks or {}).get(row["precision"])
            row.update(step_s=t, images_per_s=v.batch / t, model_tflops=model_tflops,
                       counted_tflops=counted[v.label] / t / 1e12, mfu=model_tflops / peak if peak else None)
        out.append(row)
        v.release()
    return out


def print_table(rows: list[dict]) -> None:
    print(f"{'step':>5} {'batch':>5} {'precision':>9} {'step ms':>9} {'images/s':>10} {'model TFLOP/s':>14} "
          f"{'counted TFLOP/s':>16} {'MFU':>6}")
    for r in rows:
        if r["error"]:
            print(f"{r['kind']:>5} {r['batch']:>5} {r['precision']:>9}   {r['error']}")
        else:
            mfu = f"{100 * r['mfu']:5.1f}%" if r.get("mfu") else "   n/a"
            print(f"{r['kind']:>5} {r['batch']:>5} {r['precision']:>9} {r['step_s'] * 1e3:9.1f} {r['images_per_s']:10.1f} "
                  f"{r['model_tflops']:14.2f} {r['counted_tflops']:16.2f} {mfu:>6}")


def speedup(rows: list[dict], batch: int = 256) -> float | None:
    by = {(r["batch"], r["precision"]): r for r in rows if not r["error"] and r["kind"] == "mask"}
    if (batch, "fp32") in by and (batch, "bf16") in by:
        return by[(batch, "bf16")]["images_per_s"] / by[(batch, "fp32")]["images_per_s"]
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16-quickgelu")
    ap.add_argument("--batches", default="32,256", help="comma list of batch sizes")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant (interleaved rounds)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls in the fp32 variants")
    ap.add_argument("--peak-tflops", default="", help="BF16,FP32[,TF32] dense peaks of the device (default: PEAK_TFLOPS)")
    ap.add_argument("--tiny", action="store_true",
                    help="the tiny model at batch 2, one step (on CPU without CUDA): checks the script runs")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        print(SKIP_LINE)
        return 0
    if args.tiny:
        args.model, args.batches, args.steps, args.warmup = "tiny", "2", 1, 1
    device = "cuda" if cuda else "cpu"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    if args.peak_tflops:
        bf16, fp32, *tf32 = (float(x) for x in args.peak_tflops.split(","))
        peaks = {"bf16": bf16, "fp32": fp32, "tf32": tf32[0] if tf32 else fp32}
    else:
        peaks = peak_tflops(torch.cuda.get_device_name(), args.tf32) if cuda else None
    batches = tuple(int(b) for b in args.batches.split(","))
    t0 = time.perf_counter()
    rows = measure(args.model, batches, precisions=("fp32", "tf32", "bf16"), steps=args.steps, warmup=args.warmup,
                   device=device, peaks=peaks, kinds=("mask", "coop"))
    print_table(rows)
    if peaks is None:
        print("(MFU n/a: no peak known for this device; pass --peak-tflops BF16,FP32)")
    print(f"(fp32 matmuls {'with' if args.tf32 else 'without'} TF32; {time.perf_counter() - t0:.0f} s in all)")
    ratio = speedup(rows, max(batches))
    if ratio is None:
        print(f"gpu_throughput: batch {max(batches)} did not run in both precisions", file=sys.stderr)
        return 1
    print(f"gpu_throughput speedup: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
