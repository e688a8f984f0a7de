"""Segmenting images and stacks with a trained model: prediction, post-processing, files."""
