"""Self-distillation with early exits (``distill.self_distill``): Zhang et al. 2019, "Be Your Own Teacher:
Improve the Performance of Convolutional Neural Networks via Self Distillation".

Reads top to bottom: :class:`MultiExit` is the student with a small head on each exit block (one module, so the
training loop's checkpoints and best-epoch snapshot hold the heads with the weights they were trained with);
:class:`SelfDistillObjective` sums the final head's loss (CE on the labels, or the recipe's KD losses when an
external teacher is used) and each exit's ``ce_weight·CE + weight·T²·KL(p_final || p_exit)`` (+ the feature term);
:func:`train_self_distill` runs it on the shared loop. :meth:`MultiExit.deployed` is what ships: the whole student,
or the student cut at ``export_exit`` (:mod:`edgedistill.runtimes.early_exit`).

No external teacher is needed: with ``with_teacher: false`` the unlabelled transfer images still train the exits
(the final head's soft outputs are their targets), while the final head learns from the labelled ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgedistill.runtimes.early_exit import AuxHead, cut, exit_module
from edgedistill.toolchain.training import IGNORE_INDEX, FitResult
from edgedistill.toolchain.vision.data import VisionData
from edgedistill.toolchain.vision.distill import losses
from edgedistill.toolchain.vision.distill.cache import TeacherOutputs
from edgedistill.toolchain.vision.distill.trainer import KDObjective, fit_epochs, random_shift
from edgedistill.toolchain.vision.models import logits_and_embedding
from edgedistill.toolchain.vision.recipe import DistillConfig, SelfDistillConfig

#: the name of the student's own (deepest) head in per-exit results
FINAL = "final"


class MultiExit(nn.Module):
    """``student`` plus an :class:`AuxHead` on each of ``cfg.exits`` (and, with ``feature_weight``, a linear adapter
    from each head's pooled embedding to the student's final embedding, used in training only).

    :meth:`forward` runs the student once: ``(logits (B, K), embedding (B, D), [exit logits (B, K)],
    [exit embeddings (B, D_i)])``, exits in the order the student runs them.
    """

    def __init__(self, student: nn.Module, cfg: SelfDistillConfig, num_classes: int, sample: torch.Tensor) -> None:
        super().__init__()
        self.student = student
        for name in cfg.exits:
            exit_module(student, name)  # a clear error for a path that is not an exit
        self._feats: dict[str, torch.Tensor] = {}
        self._handles = [student.get_submodule(n).register_forward_hook(self._hook(n)) for n in cfg.exits]
        order, out_dim = self._probe(cfg.exits, sample)
        self.exits = sorted(cfg.exits, key=order.index)
        prefix = int(getattr(student, "num_prefix_tokens", 0))
        shapes = {n: self._feats[n].shape for n in self.exits}
        self.heads = nn.ModuleList(
            AuxHead(cfg.head, int(shapes[n][1] if len(shapes[n]) == 4 else shapes[n][-1]), num_classes,
                    cfg.head_channels, prefix if len(shapes[n]) == 3 else 0) for n in self.exits)
        self.adapters = nn.ModuleList(nn.Linear(h.dim, out_dim) for h in self.heads) \
            if cfg.feature_weight > 0 else None
        self._feats.clear()

    def _hook(self, name: str) -> Callable[..., None]:
        def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            self._feats[name] = output
        return keep

    @torch.no_grad()
    def _probe(self, exits: list[str], sample: torch.Tensor) -> tuple[list[str], int]:
        """One pass in eval mode: the exits in the order the student runs them, and the final embedding's width
        (the exits' outputs stay in ``_feats`` for their shapes)."""
        order: list[str] = []
        handles = [self.student.get_submodule(n).register_forward_pre_hook(lambda _m, _i, n=n: order.append(n))
                   for n in exits]
        was = self.student.training
        try:
            self.student.eval()
            _, emb = logits_and_embedding(self.student, sample)
        finally:
            self.student.train(was)
            for h in handles:
                h.remove()
        return order, int(emb.shape[-1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        self._feats.clear()
        logits, emb = logits_and_embedding(self.student, x)
        embs = [h.embed(self._feats[n]) for n, h in zip(self.exits, self.heads, strict=True)]
        self._feats.clear()  # no activations kept alive between steps
        return logits, emb, [h.fc(e) for h, e in zip(self.heads, embs, strict=True)], embs

    @torch.no_grad()
    def head_accuracies(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
        """Accuracy of the final head and of each exit on ``(x, y)``: ``{"final": .., "blocks.2": .., ...}``."""
        self.eval()
        correct = dict.fromkeys([FINAL, *self.exits], 0)
        for i in range(0, len(x), batch_size):
            logits, _, exit_logits, _ = self(x[i:i + batch_size])
            yb = y[i:i + batch_size]
            for name, z in zip([FINAL, *self.exits], [logits, *exit_logits], strict=True):
                correct[name] += int((z.argmax(1) == yb).sum())
        return {k: v / max(len(x), 1) for k, v in correct.items()}

    def deployed(self, at: str | None, sample: torch.Tensor) -> nn.Module:
        """What ships: the student itself (``at`` None) or a copy cut at exit ``at`` with that exit's head. Ends
        the training's use of ``self``: the exit hooks are removed first (score the heads before)."""
        self.remove()
        if at is None:
            return self.student
        return cut(self.student.eval(), at, self.heads[self.exits.index(at)], sample)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class SelfDistillObjective(nn.Module):
    """The loss of one step: the final head's terms plus each exit's (see the module doc). ``kd`` holds the
    external teacher's terms (None: no teacher, the final head learns from the labels by CE)."""

    def __init__(self, cfg: SelfDistillConfig, kd: KDObjective | None) -> None:
        super().__init__()
        self.cfg, self.kd = cfg, kd

    def forward(self, net: MultiExit, x: torch.Tensor, labels: torch.Tensor,
                teacher: TeacherOutputs | None) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        logits, emb, exit_logits, exit_embs = net(x)
        if self.kd is not None and teacher is not None:
            terms = self.kd.terms(logits, emb, labels, teacher)
        else:
            terms = {"ce": losses.masked_ce(logits, labels)}
        for i, (name, z) in enumerate(zip(net.exits, exit_logits, strict=True)):
            terms[f"exit:{name}"] = losses.self_distill_exit(z, logits, labels, cfg.temperature, cfg.weight,
                                                             cfg.ce_weight)
            if net.adapters is not None:
                terms[f"exit_feature:{name}"] = cfg.feature_weight * losses.self_distill_feature(
                    net.adapters[i](exit_embs[i]), emb)
        total = torch.stack(list(terms.values())).sum()
        return total, {k: float(v.detach()) for k, v in terms.items()}


@dataclass
class SelfDistillResult:
    fit: FitResult
    net: MultiExit  # the student and its exit heads at the selected epoch (hooks removed)
    selected_on: str  # the head whose validation accuracy chose the epoch: "final" or the export exit


def train_self_distill(student: nn.Module, data: VisionData, cfg: DistillConfig, checkpoint: Path, seed: int,
                       cached: TeacherOutputs | None = None, teacher: nn.Module | None = None,
                       desc: str = "self-distilling student") -> SelfDistillResult:
    """Train ``student`` and heads on ``cfg.self_distill.exits`` over the whole train split (labels only where
    ``data.labelled``). With ``cached`` (offline) or ``teacher`` (online) the final head also takes the recipe's KD
    losses from that teacher; with neither, no teacher at all. The best epoch is chosen on the validation accuracy
    of the head that ships (``export_exit``, else the final one); the test split is never read."""
    from edgedistill.toolchain.vision.distill.cache import run_teacher

    sd = cfg.self_distill
    net = MultiExit(student, sd, data.num_classes, data.train_x[:2])
    if sd.export_exit is not None:  # a model that cannot be cut there fails now, not after its training
        cut(student, sd.export_exit, net.heads[net.exits.index(sd.export_exit)], data.train_x[:2])
    kd = None
    layer = cfg.feature.teacher_layer if (cfg.feature.weight > 0 or cfg.attention.weight > 0) else None
    if cached is not None or teacher is not None:
        t_channels = None
        if layer is not None:
            t_channels = int(cached.feature.shape[1]) if cached is not None else int(  # type: ignore[union-attr]
                run_teacher(teacher, data.train_x[:1], layer, desc=None).feature.shape[1])  # type: ignore[arg-type]
        factor = cached.factor if cached is not None else None  # offline factor transfer: the cached factors
        kd = KDObjective(cfg, student, t_channels, data.train_x[:1],
                         factor_channels=int(factor.shape[1]) if factor is not None else None)
    objective = SelfDistillObjective(sd, kd)
    labels = torch.where(data.labelled, data.train_y, torch.full_like(data.train_y, IGNORE_INDEX))
    gen = torch.Generator().manual_seed(seed)
    selected = sd.export_exit or FINAL

    def step(idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        x, t_out = data.train_x[idx], None
        if cached is not None:
            t_out = cached.take(idx)
        else:
            if cfg.train.augment:
                x = random_shift(x, generator=gen)
            if teacher is not None:
                t_out = run_teacher(teacher, x, layer, batch_size=len(x), desc=None)
        loss, parts = objective(net, x, labels[idx], t_out)
        return loss, {**parts, "n": len(idx)}

    try:
        res = fit_epochs(net, step, cfg.train, torch.arange(len(data.train_x)), len(data.train_x),
                         lambda: net.head_accuracies(data.val_x, data.val_y)[selected], checkpoint, desc, seed,
                         extra=objective, generators=(gen,))
    finally:
        if kd is not None:
            kd.remove_taps()
    return SelfDistillResult(res, net, selected)
