"""The RunPod Serverless worker: inference and training roles on the runpod SDK."""
