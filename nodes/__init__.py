"""PodKit's V3 nodes. The only Python in PodKit that imports ``comfy``, ``comfy_api``, ``folder_paths``."""

from __future__ import annotations

from ._comfy import ComfyExtension, io
from .lora_loader import PodKitR2LoraLoader, PodKitR2LoraLoaderModelOnly
from .presets import PodKitPresetSampler, PodKitSamplerPreset
from .save_r2 import PodKitSaveToR2
from .tiled_decode import PodKitTiledVAEDecode

NODES: list[type[io.ComfyNode]] = [
    PodKitR2LoraLoader,
    PodKitR2LoraLoaderModelOnly,
    PodKitSaveToR2,
    PodKitSamplerPreset,
    PodKitPresetSampler,
    PodKitTiledVAEDecode,
]


class PodKitExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
