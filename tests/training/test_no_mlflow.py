"""The GPU check (benchmarks/gpu.py) runs on a machine without MLflow: nothing on the training
and data import path imports it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# `sys.modules["mlflow"] = None` makes every `import mlflow` raise ImportError, as on a
# machine where it is not installed
CODE = """
import importlib, importlib.util, pkgutil, sys
sys.modules["mlflow"] = None
import celebhpo.config, celebhpo.data, celebhpo.training
for pkg in (celebhpo.data, celebhpo.training):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(info.name)
spec = importlib.util.spec_from_file_location("gpu_check", "benchmarks/gpu.py")
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print("imported", len([m for m in sys.modules if m.startswith("celebhpo.")]))
"""


def test_training_data_and_the_gpu_check_import_without_mlflow():
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("imported ")
