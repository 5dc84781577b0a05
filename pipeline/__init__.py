"""Stages of the data2vec 2.0 experiment pipeline, as plain functions plus one CLI (`python -m pipeline`).

Knows nothing about Dagster; `assets/` and `dvc.yaml` both call into it.
"""
