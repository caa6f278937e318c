"""Reference attention (AnimateAnyone Sec. 3.2) as attention processors.

The ReferenceNet (a 2D UNet run once per clip at timestep 0 on the reference latent and the motion
frames) has a :class:`ReferenceWriter` on the self-attention (``attn1``) of every spatial transformer
block: it stores that attention's input (the block's ``norm1`` output, i.e. the normalised hidden
states) in a :class:`ReferenceBank` under its module path. The denoising UNet has a
:class:`ReferenceReader` on every spatial ``attn1``: queries come from the frame, keys and values from
the frame's tokens followed by the bank's tokens at the same module path, all projected by the denoising
UNet's own ``to_k`` / ``to_v`` (Moore-AnimateAnyone's ``fusion_blocks="full"``). Under classifier-free
guidance the leading ``bank.uncond`` samples of the batch (the unconditional half) get plain
self-attention. Motion-module attention is untouched. No parameters are added, so no keys change.

Both wrap an inner standard processor (``sdpa``: torch's ``scaled_dot_product_attention``;
``math``: explicit softmax), chosen in one place, :func:`set_attention_backend`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from torch import Tensor, nn

from facepose.errors import InputError

INNER = {"sdpa": AttnProcessor2_0, "math": AttnProcessor}
# Moore-AnimateAnyone's ReferenceAttentionControl.update copies the bank to float16 in every run (fp32
# included); the readers use it in their own dtype. Matching it keeps fp32 renders of released weights
# within float rounding of theirs (and halves the bank's memory).
BANK_DTYPE = torch.float16


def is_spatial_self_attention(name: str) -> bool:
    """Processor names of the self-attentions in a UNet's spatial transformer blocks (not motion modules)."""
    return ".attentions." in name and name.endswith(".attn1.processor")


class ReferenceBank:
    """Reference features shared by writers and readers of one pipeline.

    features: module path -> (B_ref, N, C) normalised hidden states from the ReferenceNet, stored in
    ``BANK_DTYPE`` (fp16, as Moore-AnimateAnyone) and cast to the reader's dtype when read;
    num_frames: F, frames per sample in the denoising batch (its rows are batch-major, b * F + f);
    uncond: leading samples of the batch that get no reference (1 under classifier-free guidance).
    """

    def __init__(self) -> None:
        self.features: dict[str, torch.Tensor] = {}
        self.is_writing = False
        self.num_frames = 1
        self.uncond = 0

    def clear(self) -> None:
        self.features.clear()

    @contextlib.contextmanager
    def writing(self) -> Iterator["ReferenceBank"]:
        """Fill the bank from one ReferenceNet forward (previous features are dropped)."""
        self.clear()
        self.is_writing = True
        try:
            yield self
        finally:
            self.is_writing = False

    @contextlib.contextmanager
    def reading(self, num_frames: int, uncond: int = 0) -> Iterator["ReferenceBank"]:
        """Layout of the denoising batch while readers use the bank."""
        self.num_frames, self.uncond = int(num_frames), int(uncond)
        try:
            yield self
        finally:
            self.num_frames, self.uncond = 1, 0


class _Wrapped:
    def __init__(self, bank: ReferenceBank, name: str, inner: Any = None):
        self.bank = bank
        self.name = name
        self.inner = inner if inner is not None else AttnProcessor2_0()


class ReferenceWriter(_Wrapped):
    """On a ReferenceNet ``attn1``: store the normalised hidden states (B, N, C), then attend as usual."""

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Optional[Tensor] = None,
                 attention_mask: Optional[Tensor] = None, temb: Optional[Tensor] = None, **kwargs: Any) -> Tensor:
        if self.bank.is_writing:
            self.bank.features[self.name] = hidden_states.to(BANK_DTYPE)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class ReferenceReader(_Wrapped):
    """On a denoising-UNet ``attn1``: keys/values = [frame tokens, reference tokens]; hidden (B*F, N, C).
    (SD's self-attention gets no attention mask; one given here is not applied to the reference path.)"""

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Optional[Tensor] = None,
                 attention_mask: Optional[Tensor] = None, temb: Optional[Tensor] = None, **kwargs: Any) -> Tensor:
        ref = self.bank.features.get(self.name)
        if ref is None or self.bank.is_writing:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        frames = self.bank.num_frames
        n_uncond = self.bank.uncond * frames
        cond = hidden_states[n_uncond:]
        n_cond = cond.shape[0] // frames
        ref = ref.to(cond.dtype)
        if ref.shape[0] == 1:  # one reference for every frame: a broadcast view, no copy
            ref = ref.expand(n_cond * frames, -1, -1)  # (1, N_ref, C) -> (B_cond*F, N_ref, C)
        else:
            ref = ref.repeat_interleave(frames, dim=0)  # (B_cond, N_ref, C) -> (B_cond*F, N_ref, C)
        out = self.inner(attn, cond, torch.cat([cond, ref], dim=1), None, temb)
        if n_uncond == 0:
            return out
        plain = self.inner(attn, hidden_states[:n_uncond], None, None, temb)  # CFG: no reference for uncond
        return torch.cat([plain, out], dim=0)


def _processors(unet: nn.Module) -> dict[str, Any]:
    return dict(unet.attn_processors)  # type: ignore[attr-defined]


def install_reference_attention(reference_unet: nn.Module, denoising_unet: nn.Module, bank: ReferenceBank) -> int:
    """Writers on every spatial self-attention of ``reference_unet``, readers on every spatial
    self-attention of ``denoising_unet`` (paired by module path). Returns the number of pairs."""
    writers = _set(reference_unet, lambda name, inner: ReferenceWriter(bank, name[: -len(".processor")], inner))
    readers = _set(denoising_unet, lambda name, inner: ReferenceReader(bank, name[: -len(".processor")], inner))
    if writers != readers:
        missing = sorted(set(readers) ^ set(writers))
        raise ValueError(f"ReferenceNet and denoising UNet differ in spatial self-attention layers: {missing[:4]}")
    return len(readers)


def _set(unet: nn.Module, make: Any) -> list[str]:
    procs = _processors(unet)
    names = [n for n in procs if is_spatial_self_attention(n)]
    for n in names:
        inner = procs[n].inner if isinstance(procs[n], _Wrapped) else procs[n]
        procs[n] = make(n, inner)
    unet.set_attn_processor(procs)  # type: ignore[attr-defined]
    return names


def remove_reference_attention(*unets: nn.Module) -> None:
    """Put the inner standard processors back (the UNets then ignore the bank)."""
    for unet in unets:
        procs = _processors(unet)
        plain = {n: p.inner if isinstance(p, _Wrapped) else p for n, p in procs.items()}
        unet.set_attn_processor(plain)  # type: ignore[attr-defined]


def set_attention_backend(backend: str, *models: nn.Module) -> None:
    """Use ``backend`` (``sdpa`` | ``math``) in every attention processor of ``models``; reference
    writers/readers keep their role and swap their inner processor."""
    if backend not in INNER:
        raise InputError(f"unknown attention backend {backend!r}; choose from {sorted(INNER)}")
    cls = INNER[backend]
    for model in models:
        if not hasattr(model, "attn_processors"):
            continue
        procs = _processors(model)
        for name, proc in procs.items():
            if isinstance(proc, _Wrapped):
                proc.inner = cls()
            else:
                procs[name] = cls()
        model.set_attn_processor(procs)  # type: ignore[attr-defined]
