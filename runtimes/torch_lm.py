"""PyTorch adapter for Hugging Face causal LMs (the reference the exported LLM artifacts are compared with)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgedistill.core.no_code import CodeInFolderError, refuse_code
from edgedistill.runtimes.base import RUNTIMES, RuntimeError_
from edgedistill.runtimes.llm import LLMSession


@RUNTIMES.register("pytorch-llm")
class TorchLMSession(LLMSession):
    """A HF causal LM (PyTorch, KV cache) behind the same interface as the exported artifacts' runtimes."""

    folder = True

    def __init__(self, path: Path, threads: int = 1) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        path = Path(path)
        if not (path / "config.json").is_file():
            raise RuntimeError_(f"{path}: not a Hugging Face model folder (no config.json)")
        try:
            refuse_code(path)
        except CodeInFolderError as err:
            raise RuntimeError_(str(err)) from None
        torch.set_num_threads(threads)
        self.torch = torch
        # local files only (never a hub id); safetensors weights, never a pickle; never the folder's code
        self.model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, use_safetensors=True,
                                                          dtype=torch.float32, trust_remote_code=False).eval()
        self._past: Any = None
        self._threads = threads

    @property
    def n_vocab(self) -> int:
        return int(self.model.config.vocab_size)

    def _step(self, ids: list[int], past: Any) -> Any:
        with self.torch.inference_mode():
            out = self.model(input_ids=self.torch.tensor([ids]), past_key_values=past, use_cache=True)
        self._past = out.past_key_values
        return out.logits[0].float().numpy()

    def prefill(self, ids: list[int]) -> Any:
        return self._step(list(ids), None)

    def decode(self, tok: int) -> Any:
        return self._step([tok], self._past)[-1]

    def describe(self) -> dict[str, Any]:
        return {"runtime": "pytorch", "version": self.torch.__version__, "threads": self._threads}
