"""The container images the KFP components run in (set at compile time; see docker/README.md)."""
import os

IMAGE = os.environ.get("DOMAINTUNE_IMAGE", "ghcr.io/domaintune/domaintune:0.1.0-cpu")
GPU_IMAGE = os.environ.get("DOMAINTUNE_GPU_IMAGE", "ghcr.io/domaintune/domaintune:0.1.0-cuda")
