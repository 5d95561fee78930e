"""MLoRA: per-domain low-rank adapters on the tower layers."""
