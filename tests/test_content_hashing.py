"""Content-addressed stages and caches: change one pixel, one weight file, one cache byte, and what depended on it
is redone, never reused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def _imagefolder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_one_pixel_changes_the_data_key(tmp_path: Path) -> None:
    from edgedistill.toolchain.vision.data import load_vision_data
    from edgedistill.toolchain.vision.recipe import DataConfig

    root = _imagefolder(tmp_path / "imgs")
    cfg = DataConfig(kind="imagefolder", root=root, image_size=16, val_fraction=0.2, test_fraction=0.2)
    before = load_vision_data(cfg).split_hash
    assert load_vision_data(cfg).split_hash == before  # stable
    img = root / "cat" / "3.png"
    a = np.array(Image.open(img))
    a[5, 7, 1] ^= 1  # one channel of one pixel, by one level
    Image.fromarray(a).save(img)
    assert load_vision_data(cfg).split_hash != before


def test_a_changed_student_file_is_retrained_not_reused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from edgedistill.core.fileio import sha256_file, write_json
    from edgedistill.toolchain.vision.context import student_intact

    weights, meta = tmp_path / "kd.safetensors", tmp_path / "kd.json"
    save_file({"w": torch.ones(4)}, str(weights))
    write_json(meta, {"config_hash": "h", "weights_sha256": sha256_file(weights)})
    assert student_intact(weights, meta, "h") and not student_intact(weights, meta, "other-hash")
    t = load_file(str(weights))
    t["w"][2] = 1.0001
    save_file(t, str(weights))  # new weights beside old metadata (a kill between the two writes)
    assert not student_intact(weights, meta, "h")
    meta.write_text("{torn")
    assert not student_intact(weights, meta, "h")


def test_a_damaged_vision_teacher_cache_is_rebuilt(tmp_path: Path) -> None:
    from edgedistill.toolchain.vision.distill.cache import cached_teacher_outputs

    calls = []

    class Teacher(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(12, 3)

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)

        def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
            return f

        def get_classifier(self) -> torch.nn.Module:
            return self.lin

    teacher = Teacher()

    def load() -> torch.nn.Module:
        calls.append(1)
        return teacher

    x = torch.randn(5, 3, 2, 2)
    out, path, hit = cached_teacher_outputs("k" * 64, tmp_path, x, None, load)
    assert not hit and len(calls) == 1
    _, _, hit = cached_teacher_outputs("k" * 64, tmp_path, x, None, load)
    assert hit and len(calls) == 1
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # a flipped bit inside the logits
    path.write_bytes(bytes(data))
    again, _, hit = cached_teacher_outputs("k" * 64, tmp_path, x, None, load)
    assert not hit and len(calls) == 2 and torch.equal(again.logits, out.logits)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    _, _, hit = cached_teacher_outputs("k" * 64, tmp_path, x, None, load)
    assert not hit and len(calls) == 3


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_llm_cache_shard_is_rebuilt(tmp_path: Path, damage: str) -> None:
    from edgedistill.toolchain.llm.distill.cache import build_cache
    from edgedistill.toolchain.llm.tokenizer import Encoded
    from edgedistill.toolchain.training import IGNORE_INDEX

    class Body(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(50, 8)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):  # type: ignore[no-untyped-def]
            return type("Out", (), {"last_hidden_state": self.emb(input_ids)})()

    class LM(torch.nn.Module):
        """The two parts of a HF causal LM the teacher cache uses: ``.model`` (hidden states) and ``.lm_head``."""

        def __init__(self) -> None:
            super().__init__()
            self.model, self.lm_head = Body(), torch.nn.Linear(8, 50)

    torch.manual_seed(0)
    lm = LM()
    data = [Encoded([1, 5, 6, 7, 8], [IGNORE_INDEX, IGNORE_INDEX, 6, 7, 8], 2) for _ in range(6)]
    built = []

    def load() -> torch.nn.Module:
        built.append(1)
        return lm

    cache, hit = build_cache("key" * 8, tmp_path, data, 0, 50, 4, 1.0, load, shard_tokens=6, batch_size=2)
    assert not hit and len(cache.index["shards"]) > 1
    shard = tmp_path / ("key" * 8)[:24] / cache.index["shards"][1]["file"]
    if damage == "flip":
        b = bytearray(shard.read_bytes())
        b[-2] ^= 0x01
        shard.write_bytes(bytes(b))
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:40])
    else:
        shard.unlink()
    again, hit = build_cache("key" * 8, tmp_path, data, 0, 50, 4, 1.0, load, shard_tokens=6, batch_size=2)
    assert not hit and len(built) == 2
    assert torch.equal(again.logp, cache.logp) and torch.equal(again.idx, cache.idx)


def test_a_strategy_keys_the_stage_but_never_the_other_candidates(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Each strategy declares its own hash inputs: turning one on changes the distill stage's key and nothing in
    the key the other candidates share (the KD student is never retrained for it); each ``distill`` sub-section a
    strategy owns is owned by exactly one."""
    from edgedistill.toolchain.recipe import load_recipe
    from edgedistill.toolchain.rundir import RunDir
    from edgedistill.toolchain.vision.context import Context
    from edgedistill.toolchain.vision.strategies import distill_key, strategies

    monkeypatch.setattr(RunDir, "output_sha", lambda self, stage, rel: f"sha of {rel}")
    base = load_recipe("vit-to-mobilenet")
    d = base.distill

    def ctx(**update: object) -> Context:
        return Context(base.model_copy(update={"distill": d.model_copy(update=update)}), RunDir(tmp_path))

    off = ctx()
    for on in (ctx(mutual=d.mutual.model_copy(update={"enabled": True})),
               ctx(self_distill=d.self_distill.model_copy(update={"enabled": True})),
               ctx(tune=d.tune.model_copy(update={"trials": 4}))):
        assert distill_key(on) == distill_key(off)
        assert distill_key(on, ensemble=False) == distill_key(off, ensemble=False)
        assert distill_key(on, strategies()) != distill_key(off, strategies())
    owned = [sec for s in strategies() for sec in s.sections]
    assert len(owned) == len(set(owned)) and len({s.name for s in strategies()}) == len(strategies())
