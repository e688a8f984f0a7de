"""Model builders, losses, augmentation, tf.data pipelines and the training loop."""
