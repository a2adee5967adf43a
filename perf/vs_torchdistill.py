"""Vision KD throughput: edgedistill vs torchdistill (the pip package) on the same job, side by side in one run.

Same teacher (the demo's ViT-S, random weights: speed does not depend on them), same student (MobileNetV3-S), same
digits data at 32×32, batch size, AdamW + one-cycle schedule, step count and loss; each framework evaluates on
validation and saves its best checkpoint once per epoch, as torchdistill's own example script does. Every
configuration runs in a fresh process (so peak RSS is its own), in rounds that alternate the order::

    .venv/bin/python perf/vs_torchdistill.py --steps 80 --rounds 2 --threads 1

Configurations: ``edgedistill`` online response KD, FitNets hint (+ response) online, offline KD on the cached
teacher and the CE-only student; ``torchdistill`` online response KD (``KDLoss``) and FitNets hint (``MSELoss`` on
hooked features through an auxiliary student wrapper holding the same 1×1-conv regressor) driven by its
``DistillationBox``. Prints a Markdown table (median samples/s over rounds, ratio, peak RSS); paste it into
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "ed-online": ("edgedistill", "online response KD"),
    "td-online": ("torchdistill", "online response KD"),
    "ed-fitnets": ("edgedistill", "online FitNets hint + response KD"),
    "td-fitnets": ("torchdistill", "online FitNets hint + response KD"),
    "ed-offline": ("edgedistill", "offline response KD (cached teacher)"),
    "ed-ce": ("edgedistill", "CE only (no teacher)"),
}
TEMPERATURE, ALPHA, HINT_WEIGHT = 4.0, 0.9, 1.0
S_LAYER, T_LAYER = "blocks.2", "blocks.3"


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _setup(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    import torch

    from edgedistill.toolchain.recipe import load_recipe
    from edgedistill.toolchain.vision.data import load_vision_data
    from edgedistill.toolchain.vision.models import create
    from edgedistill.toolchain.vision.recipe import DataConfig

    torch.set_num_threads(args.threads)
    recipe = load_recipe("vit-to-mobilenet")
    data = load_vision_data(DataConfig(labelled_per_class=20))
    torch.manual_seed(0)
    teacher = create(recipe.teacher.name, 10, recipe.teacher.kwargs).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = create(recipe.student.name, 10)
    return recipe, data, teacher, student


def _run_edgedistill(config: str, args: argparse.Namespace, tmp: Path) -> float:
    import torch

    from edgedistill.toolchain.vision.distill.cache import cached_teacher_outputs
    from edgedistill.toolchain.vision.distill.trainer import train_student, train_supervised
    from edgedistill.toolchain.vision.recipe import DistillConfig, FeatureKD, ResponseKD, TrainConfig

    _, data, teacher, student = _setup(args)
    train = TrainConfig(epochs=1000, max_steps=args.steps, batch_size=args.batch_size, lr=3e-3, weight_decay=0.01)
    if config == "ed-ce":
        t = time.perf_counter()
        train_supervised(student, data, train, torch.arange(len(data.train_x)), tmp / "ce.pt", "ce", 0)
        return time.perf_counter() - t
    feature = FeatureKD(weight=HINT_WEIGHT, student_layer=S_LAYER, teacher_layer=T_LAYER) \
        if config == "ed-fitnets" else FeatureKD()
    cfg = DistillConfig(mode="offline" if config == "ed-offline" else "online", train=train,
                        response=ResponseKD(temperature=TEMPERATURE, alpha=ALPHA), feature=feature)
    kwargs: dict = {"teacher": teacher}
    if config == "ed-offline":  # the one-off cache build is not part of training throughput (reported apart)
        cached, _, _ = cached_teacher_outputs("perf", tmp, data.train_x, None, lambda: teacher)
        kwargs = {"cached": cached}
    t = time.perf_counter()
    train_student(student, data, cfg, tmp / "kd.pt", 0, **kwargs)
    return time.perf_counter() - t


def _run_torchdistill(config: str, args: argparse.Namespace, tmp: Path) -> float:
    import torch
    import torchdistill.core.interfaces.forward_proc  # noqa: F401 (registers the forward functions)
    from torch import nn
    from torch.utils.data import RandomSampler, TensorDataset
    from torchdistill.core.distillation import get_distillation_box
    from torchdistill.models.registry import register_auxiliary_model_wrapper
    from torchdistill.models.wrapper import AuxiliaryModelWrapper

    from edgedistill.toolchain.training import IGNORE_INDEX
    from edgedistill.toolchain.vision.distill.features import HintAdapter, to_spatial

    _, data, teacher, student = _setup(args)
    labels = torch.where(data.labelled, data.train_y, torch.full_like(data.train_y, IGNORE_INDEX))
    datasets = {"train": TensorDataset(data.train_x, labels)}
    t_tokens = teacher.get_submodule(T_LAYER)
    prefix = int(getattr(teacher, "num_prefix_tokens", 0))

    with torch.no_grad():  # probe the hint shapes once, as a torchdistill user would write them into the config
        feats: dict[str, torch.Tensor] = {}
        h1 = t_tokens.register_forward_hook(lambda m, i, o: feats.__setitem__("t", to_spatial(o, prefix)))
        h2 = student.get_submodule(S_LAYER).register_forward_hook(lambda m, i, o: feats.__setitem__("s", o))
        teacher(data.train_x[:1])
        student.eval()(data.train_x[:1])
        student.train()
        h1.remove()
        h2.remove()
    t_hw, t_ch, s_ch = tuple(feats["t"].shape[-2:]), int(feats["t"].shape[1]), int(feats["s"].shape[1])

    class TokensToMap(nn.Module):
        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return to_spatial(tokens, prefix)

    class Hint(nn.Module):  # the same FitNets regressor edgedistill trains (1×1 conv, resized to the teacher's grid)
        def __init__(self) -> None:
            super().__init__()
            self.adapter = HintAdapter("conv1x1", s_ch, t_ch)

        def forward(self, feat: torch.Tensor) -> torch.Tensor:
            return self.adapter(feat, t_hw)

    @register_auxiliary_model_wrapper
    class TeacherTokensAsMap(AuxiliaryModelWrapper):
        def __init__(self, teacher_model, device, device_ids, distributed, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__()
            self.teacher_model, self.to_map = teacher_model, TokensToMap()

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.teacher_model(x)

        def secondary_forward(self, io_dict):  # type: ignore[no-untyped-def]
            self.to_map(io_dict[f"teacher_model.{T_LAYER}"]["output"])

    @register_auxiliary_model_wrapper
    class StudentWithHint(AuxiliaryModelWrapper):
        def __init__(self, student_model, device, device_ids, distributed, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__()
            self.student_model, self.hint = student_model, Hint()

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.student_model(x)

        def secondary_forward(self, io_dict):  # type: ignore[no-untyped-def]
            self.hint(io_dict[f"student_model.{S_LAYER}"]["output"])

    spe = len(data.train_x) // args.batch_size
    epochs = -(-args.steps // spe)
    fitnets = config == "td-fitnets"
    kd = {"criterion": {"key": "KDLoss", "kwargs": {  # torchdistill's alpha weighs CE, beta the T²·KL term
        "student_module_path": ".", "student_module_io": "output", "teacher_module_path": ".",
        "teacher_module_io": "output", "temperature": TEMPERATURE, "alpha": 1 - ALPHA, "beta": ALPHA,
        "ignore_index": IGNORE_INDEX}}, "weight": 1.0}
    sub_terms = {"kd": kd}
    teacher_cfg: dict = {"requires_grad": False, "forward_proc": "forward_batch_only"}
    student_cfg: dict = {"forward_proc": "forward_batch_only"}
    if fitnets:
        teacher_cfg |= {"auxiliary_model_wrapper": {"key": "TeacherTokensAsMap", "kwargs": {}},
                        "forward_hook": {"output": [f"teacher_model.{T_LAYER}", "to_map"]}}
        student_cfg |= {"auxiliary_model_wrapper": {"key": "StudentWithHint", "kwargs": {}},
                        "forward_hook": {"output": [f"student_model.{S_LAYER}", "hint"]}}
        sub_terms["hint"] = {"criterion": {"key": "MSELoss", "kwargs": {"reduction": "mean"}},
                             "criterion_wrapper": {"key": "SimpleLossWrapper", "kwargs": {
                                 "input": {"is_from_teacher": False, "module_path": "hint", "io": "output"},
                                 "target": {"is_from_teacher": True, "module_path": "to_map", "io": "output"}}},
                             "weight": HINT_WEIGHT}
    train_config = {
        "num_epochs": epochs,
        "train_data_loader": {"dataset_id": "train", "sampler": {"class_or_func": RandomSampler, "kwargs": {}},
                              "kwargs": {"batch_size": args.batch_size, "num_workers": 0, "drop_last": True},
                              "requires_supp": True},
        "teacher": teacher_cfg, "student": student_cfg,
        "optimizer": {"key": "AdamW", "kwargs": {"lr": 3e-3, "weight_decay": 0.01}},
        "scheduler": {"key": "OneCycleLR", "kwargs": {"max_lr": 3e-3, "total_steps": args.steps,
                                                       "pct_start": 0.1}, "scheduling_step": 1},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": sub_terms}},
    }
    device = torch.device("cpu")
    t = time.perf_counter()
    box = get_distillation_box(teacher, student, datasets, train_config, device, None, False, 1)
    steps, best = 0, -1.0
    for epoch in range(epochs):
        box.pre_epoch_process(epoch=epoch)
        for x, y, supp in box.train_data_loader:
            loss = box.forward_process(x, y, supp)
            box.post_forward_process(loss=loss)
            steps += 1
            if steps >= args.steps:
                break
        box.post_epoch_process()
        with torch.no_grad():  # per-epoch validation and best checkpoint, as torchdistill's example does
            student.eval()
            acc = float((student(data.val_x).argmax(1) == data.val_y).float().mean())
            student.train()
        if acc > best:
            best = acc
            torch.save(student.state_dict(), tmp / "best.pt")
        if steps >= args.steps:
            break
    return time.perf_counter() - t


def _one(config: str, args: argparse.Namespace) -> None:
    os.environ.setdefault("EDGEDISTILL_PROGRESS", "0")
    with tempfile.TemporaryDirectory() as td:
        run = _run_torchdistill if config.startswith("td-") else _run_edgedistill
        secs = run(config, args, Path(td))
    print(json.dumps({"config": config, "seconds": secs, "peak_rss_mb": _peak_rss_mb()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is steadiest on a shared host)")
    p.add_argument("--rounds", type=int, default=2, help="each configuration runs once per round, order alternating")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of: " + ", ".join(CONFIGS))
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        return _one(args.one, args)
    configs = args.configs.split(",")
    results: dict[str, list[dict]] = {c: [] for c in configs}
    for r in range(args.rounds):
        for c in (configs if r % 2 == 0 else configs[::-1]):
            out = subprocess.run([sys.executable, __file__, "--one", c, "--steps", str(args.steps), "--batch-size",
                                  str(args.batch_size), "--threads", str(args.threads)],
                                 check=True, capture_output=True, text=True).stdout
            results[c].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {r + 1}: {c} {results[c][-1]['seconds']:.1f} s", file=sys.stderr)
    samples = args.steps * args.batch_size
    rate = {c: statistics.median(samples / x["seconds"] for x in v) for c, v in results.items()}
    rss = {c: max(x["peak_rss_mb"] for x in v) for c, v in results.items()}
    print(f"{args.steps} steps × batch {args.batch_size}, torch threads {args.threads}, {args.rounds} rounds "
          "(median samples/s; peak RSS = max over rounds, each configuration in its own process)\n")
    print("| framework | training | samples/s | vs torchdistill, same loss | vs CE-only | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    peer = {"ed-online": "td-online", "ed-fitnets": "td-fitnets"}
    for c in configs:
        fw, what = CONFIGS[c]
        vs_td = f"{rate[c] / rate[peer[c]]:.2f}×" if peer.get(c) in rate else ("1.00×" if c.startswith("td-") else "")
        vs_ce = f"{rate[c] / rate['ed-ce']:.2f}×" if "ed-ce" in rate else ""
        print(f"| {fw} | {what} | {rate[c]:.0f} | {vs_td} | {vs_ce} | {rss[c]:.0f} |")


if __name__ == "__main__":
    main()
