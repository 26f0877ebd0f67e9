"""Write bench/assets/synthetic_manifest.json: the SHA-256 of every generated synthetic dataset.

Run after a deliberate change to the generator (then regenerate the README's table with
scripts/readme_table.py). Datasets are generated afresh into a temporary folder, never taken from a cache.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from bench.data.synthetic import MANIFEST, SPECS, _build, content_digest


def main() -> None:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in SPECS.items():
            folder = Path(tmp) / spec.folder
            _build(spec, folder, check=False)
            out[name] = content_digest(folder)
            print(f"{name}: {out[name]['files']} files, sha256 {out[name]['sha256'][:16]}")
    MANIFEST.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {MANIFEST}")


if __name__ == "__main__":
    main()
