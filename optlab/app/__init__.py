"""The app layer: the Hydra command line, MLflow tracking and run comparison.

The only part of optlab that imports hydra and mlflow (both lazily, inside functions, so
that ``import optlab`` and the library stay light).
"""
