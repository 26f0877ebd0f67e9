"""bench: a composable benchmark harness for few-shot adaptation of CLIP models."""
