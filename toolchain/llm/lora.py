"""LoRA and QLoRA students through PEFT: attach adapters before training, merge them after, so the saved student
is a plain checkpoint of its family and every exporter (GGUF, ONNX) and parity check sees an ordinary model.

LoRA (Hu et al. 2021, https://arxiv.org/abs/2106.09685) freezes each target linear ``W (out × in)`` and trains
``A (r × in)`` and ``B (out × r)``: the layer computes ``W·x + (alpha / r) · B·A·x``; merging writes
``W + (alpha / r) · B·A`` back into ``W`` (PEFT's ``merge_and_unload``). QLoRA (Dettmers et al. 2023,
https://arxiv.org/abs/2305.14314) also stores the frozen block weights in 4-bit NormalFloat (bitsandbytes'
``Linear4bit``, NF4) while the adapters train; the merged student is those NF4 weights dequantized plus the adapters
— the model that was trained and validated, not the float weights it started from.

The training loop checkpoints only the adapters (:class:`AdapterState`): the frozen base is rebuilt from the same
inputs on resume.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgedistill.toolchain.llm.recipe import LoRAConfig

#: what to use when the base cannot be held in 4 bits here
QLORA_FALLBACK = "use student.lora.quantize: none (LoRA on the float weights)"


class LoRAError(ValueError):
    """A LoRA set-up that cannot train; the message names the recipe field and the fix."""


def _quiet_bitsandbytes() -> None:
    """bitsandbytes' CPU backend logs a warning at import on AVX-512-BF16 CPUs about an optional hub kernel it
    cannot fetch offline; the built-in kernels are used instead. PEFT imports bitsandbytes when it is installed."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def _import_peft() -> Any:
    """``import peft`` without its import-time noise: bitsandbytes' (above) and torch's deprecation warnings about
    torchao's enums (PEFT imports torchao when installed, as the tflite extra does)."""
    _quiet_bitsandbytes()
    pytree = logging.getLogger("torch.utils._pytree")
    level = pytree.level
    pytree.setLevel(logging.ERROR)
    try:
        import peft
    finally:
        pytree.setLevel(level)
    return peft


def nf4_unavailable(device: torch.device) -> str | None:
    """Why the installed bitsandbytes cannot hold weights in NF4 on ``device`` (a round trip of a small tensor
    through ``quantize_4bit``/``dequantize_4bit``), or None when it can."""
    _quiet_bitsandbytes()
    try:
        import bitsandbytes
        import bitsandbytes.functional as bnbf
    except Exception as err:  # not installed, or a native library that does not load here
        return f"bitsandbytes does not import ({_first_line(err)})"
    try:
        w = torch.linspace(-1, 1, 128, device=device).reshape(2, 64)
        q, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
        err = float((bnbf.dequantize_4bit(q, state) - w).abs().max())
    except Exception as exc:
        return f"bitsandbytes {bitsandbytes.__version__} has no NF4 kernels for {device.type} ({_first_line(exc)})"
    if not err < 0.2:  # NF4's widest step on [-1, 1] is ~0.15 (NaN fails too)
        return f"bitsandbytes {bitsandbytes.__version__} NF4 round trip on {device.type} is off by {err:.3g}"
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _missing_targets(model: nn.Module, targets: list[str]) -> tuple[list[str], list[str]]:
    """Targets that name no linear layer (PEFT's rule: the module's name, or a dotted suffix of its path), and the
    model's linear layer names."""
    paths = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    missing = [t for t in targets if not any(p == t or p.endswith(f".{t}") for p in paths)]
    return missing, sorted({p.rsplit(".", 1)[-1] for p in paths})


def _quantize_4bit(model: nn.Module) -> int:
    """Replace every ``nn.Linear`` but the output head with a frozen NF4 ``bnb.nn.Linear4bit`` (what
    transformers' ``load_in_4bit`` does); returns how many were replaced."""
    import bitsandbytes as bnb

    head, n = model.get_output_embeddings(), 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or child is head:
                continue
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=child.weight.dtype, quant_type="nf4", device="meta")
            q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4",
                                         module=q).to(child.weight.device)  # quantized on the move
            if child.bias is not None:
                q.bias = child.bias
            # keep every forward on the exact dequantize-then-matmul path the adapters trained against: on
            # AVX-512-BF16 CPUs an eval-mode forward otherwise repacks the weight and computes in bfloat16
            q.support_avx512bf16_for_cpu = False
            setattr(parent, name, q)
            n += 1
    return n


def _dequantize_4bit(model: nn.Module) -> None:
    """Replace every ``bnb.nn.Linear4bit`` with an ``nn.Linear`` holding its dequantized weight."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, bnb.nn.Linear4bit):
                continue
            w = child.weight
            lin = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None, device="meta")
            lin.weight = nn.Parameter(dequantize_4bit(w.data, w.quant_state).to(child.compute_dtype or torch.float32))
            if child.bias is not None:
                lin.bias = child.bias
            setattr(parent, name, lin)


def peft_config(cfg: LoRAConfig) -> Any:
    return _import_peft().LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                     target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM")


@dataclass
class Adapted:
    """A student under training adapters: the PEFT model to train, and what :func:`merge` needs to undo it."""

    peft: Any  # peft.PeftModel
    cfg: LoRAConfig
    frozen: set[str]  # parameters that were frozen before (kept frozen after the merge)
    params: int  # the student's own parameters (full precision count)
    trainable: int  # adapter parameters: all the optimiser sees

    def info(self) -> dict[str, Any]:
        return {"r": self.cfg.r, "alpha": self.cfg.alpha, "dropout": self.cfg.dropout,
                "target_modules": list(self.cfg.target_modules), "quantize": self.cfg.quantize,
                "trainable_params": self.trainable, "params": self.params}


def attach(model: nn.Module, cfg: LoRAConfig) -> Adapted:
    """Wrap ``model`` (modified in place) with LoRA adapters on ``cfg.target_modules``, its block weights in NF4
    first for ``quantize: 4bit``; every other parameter is frozen.

    Raises:
        LoRAError: a target module the model does not have, or 4-bit weights this machine cannot hold.
    """
    missing, have = _missing_targets(model, list(cfg.target_modules))
    if missing:
        raise LoRAError(f"student.lora.target_modules: the student has no linear layer named {missing}; its linear "
                        f"layers are {have}")
    if cfg.quantize == "4bit" and (why := nf4_unavailable(next(model.parameters()).device)):
        raise LoRAError(f"student.lora.quantize: 4bit cannot run here: {why}; {QLORA_FALLBACK}")
    get_peft_model = _import_peft().get_peft_model
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    params = sum(p.numel() for p in model.parameters())
    if cfg.quantize == "4bit":
        _quantize_4bit(model)
    wrapped = get_peft_model(model, peft_config(cfg))
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    return Adapted(wrapped, cfg, frozen, params, trainable)


def merge(adapted: Adapted) -> nn.Module:
    """Merge the adapters into the student and remove every trace of PEFT (and of 4-bit storage): the model object
    given to :func:`attach`, now plain ``nn.Linear`` layers holding ``W + (alpha / r) · B·A``, is returned.

    Under ``quantize: 4bit`` ``W`` is the dequantized NF4 weight the adapters trained against; merging into it in
    full precision (not back into 4 bits, which would round most of the update away) keeps the trained function.
    """
    peft_model = adapted.peft
    if adapted.cfg.quantize == "4bit":
        from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

        adapters = {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
        base = peft_model.unload()  # the NF4 base without adapters
        _dequantize_4bit(base)
        peft_model = get_peft_model(base, peft_config(adapted.cfg))
        loaded = set_peft_model_state_dict(peft_model, adapters)
        if loaded.unexpected_keys:
            raise RuntimeError(f"LoRA merge: adapters did not reattach ({loaded.unexpected_keys[:3]})")
    model = peft_model.merge_and_unload()
    for name, p in model.named_parameters():
        p.requires_grad_(name not in adapted.frozen)
    return model


class AdapterState(nn.Module):
    """The training loop's view of a student under adapters: ``state_dict`` is the adapters alone (what a
    checkpoint holds), ``parameters`` the trainable ones (what gets clipped), ``train``/``eval`` switch ``live`` (the
    model the loss calls: the PEFT model, or its DDP wrapper)."""

    def __init__(self, adapted: Adapted, live: nn.Module) -> None:
        super().__init__()
        self._models = (adapted.peft, live)  # a tuple: neither is registered as a submodule

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        from peft import get_peft_model_state_dict

        return dict(get_peft_model_state_dict(self._models[0]))

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        from peft import set_peft_model_state_dict

        want, got = set(self.state_dict()), set(state_dict)
        if want != got:
            raise KeyError(f"not this student's adapters ({len(want - got)} missing, {len(got - want)} unexpected)")
        return set_peft_model_state_dict(self._models[0], state_dict)

    def parameters(self, recurse: bool = True) -> Any:  # type: ignore[override]
        return iter([p for p in self._models[1].parameters() if p.requires_grad])

    def train(self, mode: bool = True) -> AdapterState:
        self.training = mode
        self._models[1].train(mode)
        return self
