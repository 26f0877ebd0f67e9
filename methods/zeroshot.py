"""Zero-shot CLIP: the hand-written prompt of each dataset, no training (the reference row)."""
from bench import Method


class ZeroShot(Method):
    name = "zeroshot"
    description = "Zero-shot CLIP with the dataset's hand-written prompt (reference row, no training)"
    trains = "nothing"
    reference = True
    gain_baseline = True

    @classmethod
    def plan_work(cls, config, plan) -> None:
        pass  # the harness's evaluation only

    def fit(self, clf, ctx):
        return {"trainable_params": 0}  # the harness builds the zero-shot head for every trial
