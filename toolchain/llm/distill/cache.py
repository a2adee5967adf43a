"""Offline teacher cache for LLM KD: the teacher runs once over the training set; its top-k log-probs per trained
position (at the loss temperature) are stored in sharded safetensors and reused by every student and run.

Storage per position: k float16 log-probs + k token ids (uint16 when the vocabulary fits, else int32); the mass
outside the top-k is not stored, it is ``1 - sum(exp(log-probs))``. At k=8 with a < 65,536-token vocabulary that
is 32 B/token (DistillKit stores about 300 B/token). Only positions that are trained (those predicting a
completion token) are cached.

A teacher ensemble is cached the same way: the rows are the top-k of the weighted mean of the teachers'
probability distributions (:func:`~edgedistill.toolchain.llm.distill.losses.mixture_logp`), so the remainder
``1 - sum(exp(log-probs))`` is the mixture's mass outside its top-k; the key holds every teacher's weights hash
and the weights.

Layout of a cache folder ``<cache_dir>/<key[:24]>/``::

    index.json                       key, k, temperature, vocab, dtypes, shards, bytes_per_token
    shard-00000.safetensors          logp (T, k) f16, idx (T, k) u16|i32, offsets (n + 1,) i64 for examples [a, b)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from edgedistill.core.fileio import atomic_path, read_json, sha256_file, sha256_json, write_json
from edgedistill.core.paths import cache_root
from edgedistill.toolchain.llm.distill.losses import mixture_logp
from edgedistill.toolchain.llm.tokenizer import Encoded
from edgedistill.toolchain.llm.train import collate
from edgedistill.toolchain.progress import progress_bar
from edgedistill.toolchain.training import IGNORE_INDEX

CACHE_VERSION = 2  # 2: every shard's sha256 in the index (verified on load)


def default_cache_dir() -> Path:
    return cache_root() / "llm-teacher"


def positions(e: Encoded) -> list[int]:
    """Positions ``t`` whose next token ``t + 1`` is a training target."""
    return [t for t in range(len(e.input_ids) - 1) if e.labels[t + 1] != IGNORE_INDEX]


def cache_key(teacher_sha256: str | Sequence[str], data: list[Encoded], k: int, temperature: float,
              weights: Sequence[float] | None = None) -> str:
    """The cache's key: the teacher's weights hash (an ensemble: every teacher's, in order, and their normalised
    weights; one teacher keys as before), the data, k and the temperature."""
    ids = sha256_json([[e.input_ids, e.labels] for e in data])
    teacher: object = teacher_sha256
    if not isinstance(teacher_sha256, str):
        shas = list(teacher_sha256)
        w = list(weights) if weights is not None else [1.0] * len(shas)
        if len(w) != len(shas):
            raise ValueError(f"cache_key: {len(shas)} teachers but {len(w)} weights")
        teacher = shas[0] if len(shas) == 1 else {"ensemble": shas, "weights": [x / sum(w) for x in w]}
    return sha256_json({"teacher": teacher, "data": ids, "k": k, "T": temperature, "v": CACHE_VERSION})


def _teachers(teacher: torch.nn.Module | Sequence[torch.nn.Module]) -> list[torch.nn.Module]:
    return [teacher] if isinstance(teacher, torch.nn.Module) else list(teacher)


@torch.no_grad()
def teacher_topk(teacher: torch.nn.Module | Sequence[torch.nn.Module], items: list[Encoded], pad_id: int, k: int,
                 temperature: float, vocab: int | None = None, weights: Sequence[float] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k log-probs ``(T, k)`` and ids ``(T, k)`` at every trained position of ``items``, example by example,
    over the first ``vocab`` logits (the vocabulary shared with the student; padding rows beyond it are cut).

    ``teacher`` may be a list (an ensemble with ``weights``, default equal): the rows are then the top-k of the
    weighted mean of the teachers' distributions at ``temperature``."""
    teachers = _teachers(teacher)
    w = list(weights) if weights is not None else [1.0] * len(teachers)
    dev = next(teachers[0].parameters()).device
    batch = {k: v.to(dev) for k, v in collate(items, pad_id).items()}
    hidden = [t.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
              for t in teachers]
    vals, idx = [], []
    for i, e in enumerate(items):
        pos = torch.tensor(positions(e), dtype=torch.long, device=dev)
        logp = mixture_logp([t.lm_head(h[i, pos]) for t, h in zip(teachers, hidden, strict=True)], w, temperature,
                            vocab)
        v, j = logp.topk(k, dim=-1)
        vals.append(v.cpu())
        idx.append(j.cpu())
    return torch.cat(vals), torch.cat(idx)


@dataclass
class TopKCache:
    """A loaded cache: rows of every example, addressed by example index."""

    folder: Path
    index: dict
    logp: torch.Tensor  # (T, k) float16
    idx: torch.Tensor  # (T, k) uint16 | int32
    offsets: torch.Tensor  # (n + 1,)

    def rows(self, examples: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenated rows of ``examples`` in order: ``(n, k)`` float32 log-probs and int64 ids."""
        sl = [slice(int(self.offsets[i]), int(self.offsets[i + 1])) for i in examples]
        return (torch.cat([self.logp[s] for s in sl]).float(), torch.cat([self.idx[s] for s in sl]).long())

    @property
    def bytes_per_token(self) -> float:
        return float(self.index["bytes_per_token"])


class CacheCorrupt(ValueError):
    """A cache folder's files disagree with its index (truncated, edited, missing): it is rebuilt."""


def load_cache(folder: Path) -> TopKCache:
    """Load a cache written by :func:`build_cache`, checking every shard against the sha256 in its index."""
    try:
        index = read_json(folder / "index.json")
    except (OSError, ValueError) as err:
        raise CacheCorrupt(f"{folder / 'index.json'}: unreadable ({err})") from None
    logp, idx, offsets, base = [], [], [torch.zeros(1, dtype=torch.long)], 0
    for shard in index["shards"]:
        f = folder / shard["file"]
        if not f.is_file() or sha256_file(f) != shard.get("sha256"):
            raise CacheCorrupt(f"{f}: missing or does not match the cache index")
        try:
            t = load_file(str(f))
        except Exception as err:  # safetensors raises its own error types for torn files
            raise CacheCorrupt(f"{f}: unreadable ({err})") from None
        logp.append(t["logp"])
        idx.append(t["idx"].to(torch.int32) if t["idx"].dtype == torch.uint16 else t["idx"])
        offsets.append(t["offsets"][1:] + base)
        base += int(t["offsets"][-1])
    return TopKCache(folder, index, torch.cat(logp), torch.cat(idx), torch.cat(offsets))


def build_cache(key: str, cache_dir: Path, data: list[Encoded], pad_id: int, vocab: int, k: int,
                temperature: float, load_teacher: Callable[[], torch.nn.Module | Sequence[torch.nn.Module]],
                shard_tokens: int, batch_size: int = 16, weights: Sequence[float] | None = None
                ) -> tuple[TopKCache, bool]:
    """Load the cache for ``key`` or build it (``load_teacher`` is called only on a miss). Returns ``(cache, hit)``.

    ``load_teacher`` may return a list of teachers (an ensemble, mixed with ``weights``; see :func:`teacher_topk`).
    ``index.json`` is written last, so an interrupted build is rebuilt rather than half-read.
    """
    folder = Path(cache_dir) / key[:24]
    if (folder / "index.json").is_file():
        try:
            cache = load_cache(folder)
            if cache.index.get("key") == key and len(cache.offsets) == len(data) + 1:
                return cache, True
        except CacheCorrupt:
            pass  # rebuilt below, never used
        (folder / "index.json").unlink()
    teachers = [t.eval() for t in _teachers(load_teacher())]
    w = list(weights) if weights is not None else [1.0] * len(teachers)
    idx_dtype = torch.uint16 if vocab <= 65536 else torch.int32
    shards, buf_v, buf_i, counts, first, total = [], [], [], [0], 0, 0

    def flush(last: int) -> None:
        nonlocal buf_v, buf_i, counts, first
        name = f"shard-{len(shards):05d}.safetensors"
        tensors = {"logp": torch.cat(buf_v).half().contiguous(), "idx": torch.cat(buf_i).to(idx_dtype).contiguous(),
                   "offsets": torch.tensor(counts, dtype=torch.long).cumsum(0)}
        with atomic_path(folder / name) as tmp:
            save_file(tensors, str(tmp), metadata={"key": key})
        shards.append({"file": name, "first": first, "last": last, "tokens": int(tensors["offsets"][-1]),
                       "bytes": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)})
        buf_v, buf_i, counts, first = [], [], [0], last

    for s in progress_bar(range(0, len(data), batch_size), "caching teacher top-k"):
        v, i = teacher_topk(teachers, data[s:s + batch_size], pad_id, k, temperature, vocab, w)
        n_per = [len(positions(e)) for e in data[s:s + batch_size]]
        buf_v.append(v)
        buf_i.append(i)
        counts += n_per
        total += sum(n_per)
        if sum(counts) >= shard_tokens:
            flush(min(s + batch_size, len(data)))
    if len(counts) > 1:
        flush(len(data))
    payload = sum(sh["tokens"] * k * (2 + (2 if idx_dtype == torch.uint16 else 4)) for sh in shards)
    write_json(folder / "index.json", {
        "key": key, "version": CACHE_VERSION, "k": k, "temperature": temperature, "vocab": vocab,
        "value_dtype": "float16", "index_dtype": str(idx_dtype).removeprefix("torch."), "examples": len(data),
        "tokens": total, "shards": shards, "payload_bytes_per_token": payload / max(1, total),
        "teachers": len(teachers), "weights": [x / sum(w) for x in w],
        "bytes_per_token": sum(sh["bytes"] for sh in shards) / max(1, total)})
    return load_cache(folder), False
