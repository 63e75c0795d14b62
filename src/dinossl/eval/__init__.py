"""Evaluation of frozen or fine-tuned backbones.

Shared input and output at this level (image files to model inputs, feature extraction and
its cache, results files, backbone checks, baselines); one subpackage per family of
evaluations: ``classification`` (k-NN, linear, fine-tuning), ``attention`` (maps and masks),
``video`` (label propagation on DAVIS), ``retrieval`` (image retrieval, copy detection,
near-duplicates).
"""
