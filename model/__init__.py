"""Offline side of causerec: datasets, the bucketing rule, HSTU + CAUSE, training, evaluation.

Only ``model.bucketing`` and ``model.user_hash`` are imported by the serving path; both are torch-free.
"""
