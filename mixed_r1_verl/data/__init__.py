"""Data: the canonical record, the converter to verl parquet, the training dataset class and the data engine."""
