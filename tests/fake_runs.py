"""Fake run folders for report tests: rows in the real schema, kept predictions and saved masks."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from bench.methods.mask import save_masks
from bench.results import RunFolder
from bench.evaluation import Predictions

N_TEST = 200
MASKED_NAMES = ["transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.0.attn.out_proj.weight",
                "transformer.resblocks.1.attn.in_proj_weight", "transformer.resblocks.1.attn.out_proj.weight"]


def predictions_table(labels: np.ndarray, correct: np.ndarray, num_classes: int = 4) -> pa.Table:
    predicted = np.where(correct, labels, (labels + 1) % num_classes)
    kept = Predictions()
    kept.keeper("test")(torch.as_tensor(labels), torch.as_tensor(predicted))
    return kept.table()


def write_fake_run(root, run: str = "demo", accuracy: dict | None = None, shots=(4,), seeds=(1, 2),
                   datasets=("syn_colour", "syn_texture"), masks_off: float = 0.25, error: bool = True):
    """Rows with predictions drawn at each (stack, dataset) accuracy; mask trials also save masks with
    ``masks_off`` of block 0's and half that of block 1's weights switched off."""
    accuracy = accuracy or {"zeroshot": 0.50, "mask": 0.60, "coop": 0.70, "coop+mask": 0.80}
    folder = RunFolder(root, run)
    folder.ensure()
    labels = np.arange(N_TEST) % 4
    for k in shots:
        for seed in seeds:
            for d_index, dataset in enumerate(datasets):
                images = np.random.default_rng([d_index, seed]).random(N_TEST)  # one image's difficulty
                for stack, acc in accuracy.items():
                    correct = images < acc
                    trial_id = f"{stack}-{dataset}-{k}-{seed}".replace("+", "_")
                    folder.write_predictions(trial_id, predictions_table(labels, correct))
                    folder.write_row({"trial_id": trial_id, "run": run, "suite": "synthetic", "stack": stack,
                                      "dataset": dataset, "shots": k, "seed": seed, "status": "ok",
                                      "top1": 100.0 * correct.mean(), "n_test": N_TEST, "model": "tiny",
                                      "pretrained": "bundled", "protocol": "fewshot", "bench": "0.test",
                                      "hparams": '{"mask": {"steps": 7}}' if "mask" in stack else "{}"})
                    if "mask" in stack:
                        masks = {}
                        for name in MASKED_NAMES:
                            off = masks_off if ".0." in name else masks_off / 2
                            m = torch.ones(64, 64, dtype=torch.bool)
                            m.view(-1)[: int(off * m.numel())] = False
                            masks[name] = m
                        save_masks(masks, folder.artifact_dir(trial_id) / "mask" / "mask.safetensors")
    if error:
        folder.write_row({"trial_id": "bad", "run": run, "suite": "synthetic", "stack": "coop",
                          "dataset": datasets[0], "shots": shots[0], "seed": 9, "status": "error",
                          "error": "ValueError: broken <image>"})
    return folder
