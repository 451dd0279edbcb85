"""nnU-Net-side machinery of Diff4MMTrainer: normal CTs in preprocessed space, the synthetic pool, mixing."""
