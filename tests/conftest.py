"""Shared test settings: one intra-op thread (tiny tensors run faster so, and a busy 2-core box does not thrash)."""

import os

import torch

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_MODE", "disabled")
torch.set_num_threads(1)
