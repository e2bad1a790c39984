"""A small SD-architecture VAE decoder with random weights, for tests of the banded decode.

The modules mirror ``comfy/ldm/modules/diffusionmodules/model.py`` (``Decoder``, ``ResnetBlock``,
``AttnBlock``, ``Upsample``) attribute for attribute and op for op, so PodKit's decode walks them
exactly as it walks ComfyUI's. :func:`make_vae` builds ComfyUI's own classes instead when
``COMFYUI_PATH`` points to a checkout importable from this interpreter.

:class:`TinyVAE` has the parts of ``comfy.sd.VAE`` the decode uses (``first_stage_model`` with
``post_quant_conv`` and ``decoder``, ``device``, ``vae_dtype``, ``output_device``,
``process_output``, ``decode``), and counts its decodes so a test can tell a cache hit.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.swish = nn.SiLU(inplace=True)
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(0.0, inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(self.swish(self.norm1(x)))
        h = self.conv2(self.dropout(self.swish(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, hh, ww = h.shape
        q, k, v = (m(h).reshape(b, 1, c, hh * ww).transpose(2, 3) for m in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(b, c, hh, ww)
        return x + self.proj_out(a)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.with_conv = True
        self.scale_factor = 2.0
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    def __init__(
        self, *, ch: int, out_ch: int, ch_mult: list[int], num_res_blocks: int, z_channels: int
    ) -> None:
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.give_pre_end = False
        self.tanh_out = False
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in)
        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block = nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks + 1):
                block.append(ResnetBlock(block_in, block_out))
                block_in = block_out
            up = nn.Module()
            up.block = block
            up.attn = nn.ModuleList()
            if i_level != 0:
                up.upsample = Upsample(block_in)
            self.up.insert(0, up)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, None)), None)
        for i_level in reversed(range(self.num_resolutions)):
            for i_block in range(self.num_res_blocks + 1):
                h = self.up[i_level].block[i_block](h, None)
            if i_level != 0:
                h = self.up[i_level].upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """The decoding half of an LDM ``AutoencoderKL``: ``post_quant_conv`` then the decoder."""

    def __init__(self, decoder: nn.Module, z_channels: int) -> None:
        super().__init__()
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, 1)
        self.decoder = decoder

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))  # type: ignore[no-any-return]


def _comfy_decoder(**config: Any) -> nn.Module | None:
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        return None
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        from comfy.ldm.modules.diffusionmodules.model import Decoder as ComfyDecoder
    except ImportError:
        return None
    return ComfyDecoder(  # type: ignore[no-any-return]
        ch=config["ch"],
        out_ch=3,
        ch_mult=config["ch_mult"],
        num_res_blocks=config["num_res_blocks"],
        attn_resolutions=[],
        in_channels=3,
        resolution=256,
        z_channels=config["z_channels"],
    )


def randomize(module: nn.Module, seed: int) -> None:
    """N(0, 1/fan_in) weights, norm scales 1, biases 0 (as tests/support/make_tiny_models.py writes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.ones_like(p) if "norm" in name else torch.zeros_like(p))
            else:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=gen) * fan_in**-0.5)


class TinyVAE:
    """The parts of ``comfy.sd.VAE`` PodKit's decode uses, around a random SD-architecture decoder."""

    def __init__(
        self,
        *,
        ch: int = 32,
        ch_mult: list[int] | None = None,
        num_res_blocks: int = 2,
        z_channels: int = 4,
        seed: int = 0,
        comfy: bool = True,
    ) -> None:
        config = {
            "ch": ch,
            "ch_mult": ch_mult or [1, 2, 4, 4],
            "num_res_blocks": num_res_blocks,
            "z_channels": z_channels,
        }
        decoder = _comfy_decoder(**config) if comfy else None
        self.uses_comfy_classes = decoder is not None
        if decoder is None:
            decoder = Decoder(out_ch=3, **config)
        self.first_stage_model = AutoencoderKL(decoder, z_channels).eval()
        randomize(self.first_stage_model, seed)
        self.device = torch.device("cpu")
        self.vae_dtype = torch.float32
        self.output_device = torch.device("cpu")
        self.latent_channels = z_channels
        self.decodes = 0

    def process_output(self, image: torch.Tensor) -> torch.Tensor:
        return torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        """Full decode to an IMAGE ``[B, H, W, C]``, as ``comfy.sd.VAE.decode`` returns it."""
        self.decodes += 1
        with torch.inference_mode():
            raw = self.first_stage_model.decode(samples.to(self.vae_dtype))
            return self.process_output(raw.float()).movedim(1, -1)
