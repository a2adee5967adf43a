"""The distill step under `accelerate launch --multi_gpu --num_processes 2` on CPU (gloo) matches one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.llm_fixtures import TinyLM, tiny_lm  # noqa: F401  (session fixture)

#: two gloo ranks vs one process: same batches, globally normalised loss; differences are float reduction order
LOSS_MATCH_RTOL = 1e-4


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tiny_lm: TinyLM, tmp_path: Path) -> None:  # noqa: F811
    tiny_lm.tok.save_pretrained(str(tiny_lm.dir))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    args = ["-m", "edgedistill.toolchain.llm.launch", "--teacher", str(tiny_lm.dir), "--steps", "3",
            "--batch-size", "4", "--examples", "24"]
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, *args, "--out", str(one)], check=True, env=env, timeout=300)
    accel = Path(sys.executable).with_name("accelerate")
    subprocess.run([str(accel), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29531",
                    *args, "--out", str(two)], check=True, env=env, timeout=300)
    h1, h2 = json.loads(one.read_text()), json.loads(two.read_text())
    assert h1["world"] == 1 and h2["world"] == 2
    assert h2["history"] == pytest.approx(h1["history"], rel=LOSS_MATCH_RTOL), (h1, h2)
