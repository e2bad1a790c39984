"""PodKit's rules: data types, validation, planning, state machines and the cache protocol.

Nothing in this package imports ComfyUI, torch, boto3, aiohttp or PIL (an import-budget test
enforces it), so it is fast to import and tested alone.
"""
