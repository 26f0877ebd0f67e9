"""The example third-party plugin package: installed with pip, discovered, stacked with mask."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUN_STACK = """
import json, torch
torch.set_num_threads(1)
from bench.spec import TrialSpec
from bench.trial import run_trial
row = run_trial(TrialSpec(run="r", suite="synthetic", dataset="syn_novel", shots=4, seed=1, stack="prototype+mask",
                          overrides={"mask": {"steps": "2"}, "prototype": {"text_weight": "0.0"}}))
zs = run_trial(TrialSpec(run="r", suite="synthetic", dataset="syn_novel", shots=4, seed=1, stack="zeroshot"))
print(json.dumps({"top1": row["top1"], "zeroshot": zs["top1"], "sparsity": row["mask_sparsity"]}))
"""


def test_example_plugin_installs_lists_and_stacks(tmp_path):
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e",
           str(ROOT / "examples" / "bench-example-plugin")]
    subprocess.run(pip, check=True, capture_output=True)
    try:
        listed = subprocess.run([sys.executable, "-m", "bench.cli", "list", "methods"], capture_output=True,
                                text=True, cwd=tmp_path, env={**os.environ, "COLUMNS": "250"})  # one line a row
        assert listed.returncode == 0 and "prototype" in listed.stdout and "Nearest class prototype" in listed.stdout
        ran = subprocess.run([sys.executable, "-c", RUN_STACK], capture_output=True, text=True, cwd=tmp_path,
                             timeout=600)
        assert ran.returncode == 0, ran.stderr
        result = json.loads(ran.stdout.strip().splitlines()[-1])
        # image prototypes of made-up class names beat the text prompt, which cannot know those names
        assert result["top1"] > result["zeroshot"] + 20
        assert result["sparsity"] is not None
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", "bench-example-plugin"],
                       capture_output=True)
