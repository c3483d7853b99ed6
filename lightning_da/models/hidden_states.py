"""One layer's hidden state without `output_hidden_states`: read by a hook where Hugging Face takes it.

`hidden_states[layer]` (0 = embeddings, i = decoder block i) is the input of block `layer`, or the
final norm's output for the last index (transformers ties that one to `last_hidden_state`). A
forward pre-hook on block `layer` reads it; `run_until` stops the forward there, so the later
blocks, the final norm and the lm_head never run, and nothing about the model changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from transformers import PreTrainedModel

from lightning_da.errors import UserError


def _decoder(model: PreTrainedModel) -> nn.Module:
    """The decoder stack (no lm_head) of a causal LM, a peft model over one included."""
    decoder = model.get_decoder()
    if not isinstance(getattr(decoder, "layers", None), nn.ModuleList) or not isinstance(getattr(decoder, "norm", None), nn.Module):
        raise UserError(f"latent Best-of-N reads hidden states from a decoder with `layers` and `norm` (Llama, Qwen2, "
                        f"Gemma3, Mistral); {type(decoder).__name__} has not both: score with evaluate.py's full pass instead")
    return decoder


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _output(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


@contextlib.contextmanager
def hooked(model: PreTrainedModel, layer: int, read) -> Iterator[None]:
    """Within the block, each forward calls `read(hidden)` with `hidden_states[layer]`, (rows, positions, H)."""
    decoder = _decoder(model)
    if layer < len(decoder.layers):
        handle = decoder.layers[layer].register_forward_pre_hook(lambda _m, args, kwargs: read(_hidden(args, kwargs)), with_kwargs=True)
    else:
        handle = decoder.norm.register_forward_hook(lambda _m, _args, output: read(_output(output)))
    try:
        yield
    finally:
        handle.remove()


class _Reached(Exception):
    """Raised by the hook once `hidden_states[layer]` is known, to stop the forward there."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden


def run_until(model: PreTrainedModel, layer: int, **inputs) -> torch.Tensor:
    """`hidden_states[layer]` of `inputs` (ids, mask, positions, a cache to extend), running only blocks
    0..layer-1: the cache grows in those layers only, which is all a later call to `layer` reads."""

    def stop(hidden: torch.Tensor):
        raise _Reached(hidden)

    try:
        with hooked(model, layer, stop):
            _decoder(model)(**inputs, use_cache=True)
    except _Reached as reached:
        return reached.hidden
    raise AssertionError("the decoder never reached the hooked layer")


class FinalTokenStates:
    """`hidden_states[layer]` of each row's final token, read while `generate` samples the rows.

    Each decoding step feeds every row its newest token; a row's state is overwritten at each step
    until it has fed an `eos` id. So a row that ended with EOS keeps the state of its last token
    before EOS (read in the step that sampled EOS), and a row cut by the token budget needs one more
    step after its last token (`generate` with one more new token). Memory: one state per row.
    """

    def __init__(self, model: PreTrainedModel, layer: int, eos: Iterable[int]):
        self.model, self.layer = model, layer
        self.eos = torch.tensor(sorted(eos))
        self.states: torch.Tensor | None = None
        self._done: torch.Tensor | None = None

    def _fed(self, _module, args, kwargs) -> None:
        ids = args[0] if args else kwargs["input"]
        newest = torch.isin(ids[:, -1], self.eos.to(ids.device))
        self._done = newest if self._done is None else self._done | newest

    def _read(self, hidden: torch.Tensor) -> None:
        newest = hidden[:, -1].float()
        if self.states is None:
            self.states = newest.clone()
        else:
            running = ~self._done
            self.states[running] = newest[running]

    @contextlib.contextmanager
    def capturing(self) -> Iterator[FinalTokenStates]:
        embeddings = self.model.get_input_embeddings()
        handle = embeddings.register_forward_pre_hook(self._fed, with_kwargs=True)
        try:
            with hooked(self.model, self.layer, self._read):
                yield self
        finally:
            handle.remove()
