"""benchmarks/gpu_check.py without a GPU: its arguments, report, target table and the no-GPU exit; and its
batched refine (crf_refine's model on a batch) against crf_refine one by one, on the CPU."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import segpost

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arguments_and_where_the_report_goes(gpu_check, tmp_path):
    args = gpu_check.parse_args([])
    assert args.json is None and not args.no_device and args.repeats == 10
    assert gpu_check.json_path(args, {}) is None
    assert gpu_check.json_path(args, {"OUT": str(tmp_path)}) == tmp_path / "gpu_check.json"
    args = gpu_check.parse_args(["--json", str(tmp_path / "r.json"), "--no-device", "--repeats", "3"])
    assert gpu_check.json_path(args, {"OUT": "/elsewhere"}) == tmp_path / "r.json"
    assert args.no_device and args.repeats == 3
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--repeats", "many"])


def test_targets_pass_fail_and_not_run(gpu_check):
    names = [name for name, _, _ in gpu_check.TARGETS]
    rows = gpu_check.target_rows({names[0]: 9.5, names[1]: 5.01, names[3]: 120.0})
    assert [row["status"] for row in rows] == ["pass", "FAIL", "not run", "reported"]
    assert rows[2]["limit_ms"] == 88.0 and "heiwang1997" in rows[2]["target"]
    table = gpu_check.format_table(rows).splitlines()
    assert table[0] == "| what | median ms | target | result |" and len(table) == 2 + len(rows)
    assert "| 9.50 | <= 10 ms | pass |" in table[2] and "| - |" in table[4]


def test_no_device_run_writes_versions_and_targets(gpu_check, tmp_path, capsys):
    path = tmp_path / "out" / "report.json"
    assert gpu_check.main(["--no-device", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["versions"]["torch"] == torch.__version__
    assert report["versions"]["segpost"] == segpost.__version__
    assert report["extension"]["error"] == "not tried (--no-device)"
    assert [row["status"] for row in report["targets"]] == ["not run"] * len(gpu_check.TARGETS)
    assert report["checks"] == [] and report["ok"] is False
    assert "| what | median ms | target | result |" in capsys.readouterr().out


def test_without_a_gpu_it_says_so_and_exits_2(gpu_check, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = tmp_path / "report.json"
    assert gpu_check.main(["--json", str(path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    report = json.loads(path.read_text())
    assert report["ok"] is False and report["error"].startswith("no CUDA device")


def test_the_command_writes_to_out(tmp_path):
    # As the device machine runs it: python benchmarks/gpu_check.py, the report into $OUT.
    env = dict(os.environ, OUT=str(tmp_path))
    result = subprocess.run([sys.executable, str(SCRIPT), "--no-device"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "gpu_check.json").read_text())["targets"]


def test_batched_refine_is_crf_refine_one_by_one(gpu_check):
    # The batch row's model: crf_refine's features, kernels and mean field over a whole batch (on the CPU
    # one lattice per image; on CUDA one per kernel for the batch).
    from skimage import data

    images = np.stack([data.astronaut()[100:132, 150:198], data.astronaut()[200:232, 100:148]])
    logits = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(0)) * 2
    params = segpost.CRFParams.deeplab()
    labels = gpu_check.refine_batch(torch.from_numpy(images).permute(0, 3, 1, 2), logits, params, 5)
    want = np.stack([segpost.crf_refine(image, scores.numpy(), iterations=5) for image, scores in zip(images, logits)])
    assert labels.shape == (2, 32, 48)
    assert (labels.numpy() == want).mean() >= 0.999
