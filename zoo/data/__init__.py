"""Datasets and how batches reach the model: the built-in dataset plugins (``mnist``, ``image_folder``),
class subsets and splits, preprocessing, augmentation and the decoded image cache.
"""
