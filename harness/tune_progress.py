"""The Tune callback behind `bench run`'s progress line (imported only once Ray's environment is set)."""
from __future__ import annotations

from ray import tune

from .results import RunFolder
from .spec import TrialSpec


class ProgressCallback(tune.Callback):
    """Advances the rich progress bar; records trials whose worker died without writing a row."""

    def __init__(self, bar, task, folder: RunFolder, counts: dict[str, int]):
        self.bar, self.task, self.folder, self.counts = bar, task, folder, counts

    def __getstate__(self):  # Tune pickles its callbacks with the experiment state; ours are driver-only
        return {}

    def _advance(self, outcome: str) -> None:
        self.counts[outcome] += 1
        self.bar.update(self.task, advance=1, failed=self.counts["error"] + self.counts["lost"])

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._advance("ok" if result.get("ok") else "error")

    def on_trial_error(self, iteration, trials, trial, **info):
        spec = TrialSpec.from_dict(trial.config["spec"])
        if spec.trial_id not in self.folder.done_ids():
            from .execute import error_row

            self.folder.write_row(error_row(spec, "trial process died (killed or out of memory); "
                                                  "rerun with --retry-failed"))
        self._advance("lost")
