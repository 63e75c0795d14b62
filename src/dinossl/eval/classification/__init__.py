"""Classification protocols on frozen or fine-tuned features: weighted k-NN, linear probe, fine-tuning."""
