"""Device profiles, the agent bundle, the constrained and estimated transports, and the device matrix."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from edgedistill.benchmarks.harness import BenchItem, measure_devices
from edgedistill.benchmarks.report.common import device_rows, devices_markdown
from edgedistill.devices.bundle import build_bundle
from edgedistill.devices.estimate import EstimateTransport, estimate_ms, graph_cost
from edgedistill.devices.local import AgentError, AgentJob
from edgedistill.devices.profile import ProfileError, get_profile, load_profiles
from edgedistill.devices.transport import Label, open_transport, parse_device
from edgedistill.toolchain.vision.export.onnx import export_fp32

SITE = str(Path(np.__file__).parents[1])  # the site-packages holding numpy and onnxruntime


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("dev")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 6 * 6, 5))
    export_fp32(net, torch.zeros(1, 3, 8, 8), d / "m.onnx")
    x = np.random.default_rng(0).standard_normal((12, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        np.savez(d / "eval.npz", x=x, y=net(torch.from_numpy(x)).argmax(1).numpy())
    return d / "m.onnx", d / "eval.npz"


def test_builtin_profiles_are_valid_and_host_is_detected() -> None:
    p = load_profiles()
    assert {"host", "rpi4", "rpi5", "snapdragon8gen3"} <= set(p)
    assert p["rpi4"].cores == 4 and p["rpi4"].clock_ghz == 1.5 and p["rpi5"].cpu_part == "0xd0b"
    host = p["host"]
    assert host.cores == len(os.sched_getaffinity(0)) and host.ram_mb > 256 and host.mem_bandwidth_gbs > 0.1


def test_user_profiles_by_folder_and_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text("name: tiny\ncores: 1\nclock_ghz: 1.0\nram_mb: 2048\nisa: armv8-a\n"
                                        "peak_gflops_fp32: 8\npeak_gops_int8: 16\nmem_bandwidth_gbs: 4\n")
    assert get_profile("tiny", [tmp_path]).source == str(tmp_path / "tiny.yaml")
    (tmp_path / "bad.yaml").write_text("name: bad\ncores: 0\n")
    with pytest.raises(ProfileError, match=r"bad.yaml: cores: .*greater than or equal to 1"):
        load_profiles([tmp_path])
    with pytest.raises(ProfileError, match="unknown device profile 'nope'.*--profile"):
        get_profile("nope")


def test_device_specs() -> None:
    assert parse_device("host").transport == "local"
    d = parse_device("rpi4-constrained")
    assert (d.transport, d.profile.name) == ("constrained", "rpi4")
    assert parse_device("rpi5-estimated").transport == "estimated"
    assert parse_device("qemu-arm64:rpi5").profile.name == "rpi5"
    s = parse_device("ssh://pi@board.local:2222?profile=rpi5&key=~/.ssh/k")
    assert s.options == {"host": "board.local", "port": "2222", "user": "pi", "key": "~/.ssh/k"}
    assert parse_device("adb").profile.name == "snapdragon8gen3"
    with pytest.raises(ValueError, match="not a device spec"):
        parse_device("toaster")


def test_bundle_runs_the_agent_without_edgedistill_installed(model: tuple[Path, Path], tmp_path: Path) -> None:
    zpath = build_bundle(tmp_path / "agent.zip")
    names = set(zipfile.ZipFile(zpath).namelist())
    assert {"edgedistill/devices/agent.py", "edgedistill/runtimes/ort.py", "edgedistill/core/registry.py",
            "edgedistill/__init__.py"} <= names
    # -S: no site-packages processing, so the editable install is invisible; only the bundle provides edgedistill
    env = {"PYTHONPATH": f"{zpath}:{SITE}", "PATH": os.environ["PATH"]}
    probe = subprocess.run([sys.executable, "-S", "-c", "import edgedistill; print(edgedistill.__file__)"],
                           capture_output=True, text=True, env=env, check=True)
    assert str(zpath) in probe.stdout
    proc = subprocess.run([sys.executable, "-S", "-m", "edgedistill.devices.agent", "--artifact", str(model[0]),
                           "--eval", str(model[1]), "--runs", "3", "--warmup", "1"],
                          capture_output=True, text=True, env=env, check=False)
    assert '"latency_ms"' in proc.stdout, proc.stderr


def test_constrained_caps_cores_and_memory(model: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "one.yaml").write_text("name: one\ncores: 1\nclock_ghz: 1.0\nram_mb: 3072\nisa: x\n"
                                       "peak_gflops_fp32: 8\npeak_gops_int8: 16\nmem_bandwidth_gbs: 4\n")
    tr = open_transport(parse_device("one-constrained", [tmp_path]))
    assert tr.threads([1, "all"]) == [1]
    for method in ("rlimit-as", "auto"):
        tr.memory_method = method  # type: ignore[attr-defined]
        doc = tr.run(AgentJob(model[0], 1, model[1], warmup=1, runs=5))
        applied = doc["device"]["applied"]
        assert doc["device"]["label"] == "constrained" and applied["cores_applied"] == 1
        assert doc["machine"]["cpu_affinity"] == 1 and applied["memory"]["limit_mb"] == 3072
        assert applied["memory"]["method"] in ("rlimit-as", "cgroup-v1")


def test_constrained_memory_cap_is_enforced(model: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "small.yaml").write_text("name: small\ncores: 1\nclock_ghz: 1.0\nram_mb: 64\nisa: x\n"
                                         "peak_gflops_fp32: 8\npeak_gops_int8: 16\nmem_bandwidth_gbs: 4\n")
    tr = open_transport(parse_device("small-constrained", [tmp_path]))
    tr.memory_method = "rlimit-as"  # type: ignore[attr-defined]
    with pytest.raises(AgentError):  # 64 MB of address space cannot even load numpy + onnxruntime
        tr.run(AgentJob(model[0], 1, warmup=0, runs=1))


def test_roofline_counts_conv_and_gemm_flops(model: tuple[Path, Path]) -> None:
    cost = graph_cost(model[0])
    conv = 2 * 8 * 6 * 6 * 3 * 3 * 3  # out elements x (Cin x kh x kw)
    gemm = 2 * 5 * 8 * 6 * 6
    assert conv + gemm <= cost.flops <= conv + gemm + 1000  # plus ReLU and bias adds
    rpi4 = get_profile("rpi4")
    one, four = estimate_ms(cost, rpi4, 1)["compute_ms"], estimate_ms(cost, rpi4, 4)["compute_ms"]
    assert one == pytest.approx(4 * four)
    doc = EstimateTransport(parse_device("rpi4-estimated")).run(AgentJob(model[0], 4))
    assert doc["device"]["label"] == Label.ESTIMATED and doc["latency_ms"]["p50"] > 0
    with pytest.raises(AgentError, match="estimates need an ONNX or TFLite vision graph or a GGUF"):
        EstimateTransport(parse_device("rpi4-estimated")).run(AgentJob(model[0].with_suffix(".safetensors"), 1))


def test_calibration_divides_each_class_by_its_efficiency(model: tuple[Path, Path], tmp_path: Path) -> None:
    """The calibrated estimate is each operator class's roofline time over its fitted efficiency plus the fitted
    dispatch cost; a class the calibration does not name keeps the pure roofline; a bad file is one clear error."""
    from edgedistill.devices.estimate import DISPATCH_US, load_calibration, roofline_by_class

    cost = graph_cost(model[0])
    assert {"conv", "matmul"} <= set(cost.classes) and len(cost.classes) == len(cost.per_node)
    rpi4 = get_profile("rpi4")
    by = roofline_by_class(cost, rpi4, 1)
    raw = estimate_ms(cost, rpi4, 1, calibration=False)
    assert raw["ms"] == pytest.approx((sum(by.values()) + cost.nodes * DISPATCH_US * 1e-6) * 1e3)
    calib = {"efficiency": {"conv": 0.25}, "dispatch_us": 1.0}
    est = estimate_ms(cost, rpi4, 1, calibration=calib)
    rest = sum(t for c, t in by.items() if c != "conv")
    assert est["ms"] == pytest.approx((by["conv"] / 0.25 + rest + cost.nodes * 1e-6) * 1e3)
    assert est["roofline_ms"] == pytest.approx(raw["ms"]) and est["calibrated"] == "calibrated"
    bad = tmp_path / "calibration.json"
    bad.write_text('{"efficiency": {"conv": -1}}')
    with pytest.raises(ValueError, match="calibration.json: efficiency"):
        load_calibration(bad)


def test_matrix_labels_every_figure_and_survives_a_failed_device(model: tuple[Path, Path], tmp_path: Path) -> None:
    devices = ["rpi4-estimated", "host", "rpi4-constrained", "ssh://nobody@127.0.0.1:1?known_hosts=/dev/null",
               "nosuch-estimated"]
    res = measure_devices([BenchItem("m", model[0])], devices, [1], model[1], tmp_path, 1, 5)
    assert list(res)[0] == "host"  # host first: the others' parity is against its logits
    assert {d: r["label"] for d, r in res.items()} == {
        "host": "measured", "rpi4-estimated": "estimated", "rpi4-constrained": "constrained",
        devices[3]: "measured", "nosuch-estimated": None}
    assert res["host"]["error"] is None and res["rpi4-constrained"]["error"] is None
    assert "127.0.0.1:1" in res[devices[3]]["error"] and "nosuch" in res["nosuch-estimated"]["error"]
    par = res["rpi4-constrained"]["results"]["m"]["parity_vs_host"]
    assert par["max_abs_diff"] < 1e-5 and par["top1_agreement"] == 1.0
    rows = device_rows({"devices": res})
    assert {r["label"] for r in rows if r["model"]} == {"measured", "constrained", "estimated"}
    md = "\n".join(devices_markdown(rows))
    assert "| rpi4-estimated | estimated | m | 1 |" in md and "FAILED" in md
    # a second run is served from the per-device caches
    again = measure_devices([BenchItem("m", model[0])], ["rpi4-constrained"], [1], model[1], tmp_path, 1, 5)
    assert again["rpi4-constrained"]["results"]["m"]["runs"][1] == res["rpi4-constrained"]["results"]["m"]["runs"][1]


def test_profile_overrides_in_a_device_spec() -> None:
    d = parse_device("rpi4-constrained?cores=1&ram_mb=768")
    assert (d.transport, d.profile.cores, d.profile.ram_mb) == ("constrained", 1, 768)
    assert d.profile.name == "rpi4[cores=1,ram_mb=768]" and "?" not in d.slug
    assert parse_device("qemu-arm64:rpi5?cores=2").profile.cores == 2
    with pytest.raises(ValueError, match="'gpu=1' is not an override"):
        parse_device("rpi4-estimated?gpu=1")


def test_tflite_estimate_counts_flops_by_hand(tmp_path: Path) -> None:
    """A conv (3→4 channels, 3×3, padding 1, on 8×8) and a linear layer (256→10): the TFLite estimate's operator
    FLOPs equal the arithmetic done by hand (2 per multiply-accumulate)."""
    import torch

    from edgedistill.devices.estimate import tflite_cost
    from edgedistill.toolchain.vision.export import tflite

    tflite.require()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Flatten(),
                                torch.nn.Linear(256, 10)).eval()
    path = tmp_path / "tiny.tflite"
    tflite.export_variant(model, torch.zeros(1, 3, 8, 8), "fp32", path, path, None, "nhwc", "tiny")
    cost = tflite_cost(path)
    by = dict(cost.ops)
    assert by["CONV_2D"] == 2 * (8 * 8 * 4) * (3 * 3 * 3)  # 13,824: every output × (kh·kw·Cin)
    assert by["FULLY_CONNECTED"] == 2 * 10 * 256  # 5,120
    assert cost.flops >= by["CONV_2D"] + by["FULLY_CONNECTED"] and cost.int8_flops == 0
    doc = EstimateTransport(parse_device("rpi4-estimated")).run(AgentJob(path, 1))
    assert doc["device"]["label"] == Label.ESTIMATED and doc["latency_ms"]["p50"] > 0


def test_each_arm_profile_gets_the_llama_build_for_its_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pi 4 (Armv8.0) → the plain build; Pi 5 and the phone (dot product) → the SDOT build; x86 → none. A missing
    cross compiler is one clear line naming the apt packages."""
    from edgedistill.devices import llama_arm64

    got = {n: llama_arm64.arch_for(get_profile(n)) for n in ("rpi4", "rpi5", "snapdragon8gen3", "x86-avx2")}
    assert got == {"rpi4": "armv8-a", "rpi5": "armv8.2-a+dotprod", "snapdragon8gen3": "armv8.2-a+dotprod",
                   "x86-avx2": None}
    assert get_profile("snapdragon8gen3").qemu_cpu == "cortex-a76"  # never qemu's 'max' (wrong int8)
    with pytest.raises(llama_arm64.LlamaArm64Error, match="no such aarch64 llama.cpp build"):
        llama_arm64.ensure("armv9-a")
    monkeypatch.setattr(llama_arm64, "build_dir", lambda arch, version=None: Path("/nonexistent") / arch)
    monkeypatch.setattr(llama_arm64.shutil, "which", lambda tool: None)
    with pytest.raises(llama_arm64.LlamaArm64Error, match="apt-get install g\\+\\+-aarch64-linux-gnu"):
        llama_arm64.ensure("armv8-a")
