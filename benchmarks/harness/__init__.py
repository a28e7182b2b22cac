"""What the studies under benchmarks/ share, so that no study imports another or a private name of the package
(tests/studies/test_study_imports.py checks both): a study imports `harness` and the package's public API only.

- `harness.clock`: elapsed time, printed progress and a time budget.
- `harness.machine`: the record of the machine a number was measured on (date, versions, git commit, GPU).
- `harness.texts`: the real texts of the quality studies, fetched from package registries into the cache.
- `harness.writers`: results written whole (a temporary file, then a rename) and paths shown from the repository.
- `harness.shapes`: the LLaMA shapes of the GPU speed studies and the evenly spread layer choice.
- `harness.arguments`: the arguments every quality study takes, and its calibration windows.
- `harness.llama_cpp_timing`: one timed prefill and decode through llama-cpp-python.
"""

from __future__ import annotations

from pathlib import Path


BENCH_DIR = Path(__file__).resolve().parent.parent
ROOT = BENCH_DIR.parent
