"""Evaluation of frozen or fine-tuned backbones."""
