"""The pod: one start command (bootstrap, then ComfyUI with PodKit in the foreground)."""
