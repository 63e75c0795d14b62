"""Semi-supervised video object segmentation: label propagation with patch features, the DAVIS layout and its J and F scores."""
