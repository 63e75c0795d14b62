"""Attention of the last block: per-head [CLS] maps, mass masks, overlays, and their Jaccard against foreground masks."""
