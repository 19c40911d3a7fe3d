"""Fine-tuning: curate a catalog by engagement, prepare training examples, train a background LoRA."""
