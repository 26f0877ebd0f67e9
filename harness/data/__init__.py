"""Datasets in CoOp's on-disk layout, Dassl few-shot sampling, and CLIP transforms."""
