"""Deployment runtime: ComfyUI as a child process, the cold start a worker and a pod share."""
