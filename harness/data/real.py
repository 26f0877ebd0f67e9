"""The real benchmark datasets in CoOp's on-disk layout."""
