"""lleval inside a transformers ``Trainer``: `LlevalCallback` scores the model being trained
every N steps or at each checkpoint save, with `lleval.Evaluator` (the data read and
tokenized once, when training begins), and puts the metrics in the Trainer's own log
history under the ``eval_`` names the Trainer gives its evaluation (``eval_perplexity``,
``eval_bits_per_byte``, ``eval_perplexity_ci_low``...; of several datasets,
``eval_DATASET_perplexity``), through ``trainer.log``: whatever trackers the Trainer
reports to (``report_to``: TensorBoard, W&B, MLflow...) get them as they get its loss.

Imports transformers when imported (it subclasses ``TrainerCallback``).
"""

from __future__ import annotations

from typing import Any, Sequence

from transformers import TrainerCallback

from lleval.commands.evaluator import Evaluator, live_config
from lleval.errors import ConfigError
from lleval.trackers.points import points


def trainer_metrics(report: Any, prefix: str = "eval_") -> dict[str, float]:
    """A report's points (`lleval.trackers.points`) as the Trainer names its evaluation's
    metrics: ``eval_`` before each, and ``_`` where lleval's names have ``/``."""
    metrics: dict[str, float] = {}
    for point in points(report.to_dict()):
        metrics.update({prefix + name.replace("/", "_"): value for name, value in point.metrics.items()})
    return metrics


class LlevalCallback(TrainerCallback):
    """Held-out evaluation by lleval during ``Trainer.train``.

    ``trainer``: the Trainer (its ``log`` puts the metrics in the log history and hands them
    to its reporting callbacks); ``dataset``: what ``-d`` takes, or a list of them;
    ``every_steps``: evaluate every N optimizer steps; ``at_save``: at each checkpoint save
    (the default when ``every_steps`` is not given), so each saved checkpoint has the numbers
    ``lleval score`` gives its folder; ``tokenizer``: default the Trainer's
    ``processing_class``; further keywords: `lleval.Evaluator`'s settings (``max_length``,
    ``log_to``...). ``reports`` keeps each evaluation's ``(step, report)``.
    """

    def __init__(self, trainer: Any, dataset: str | Sequence[str] | None = None, *, every_steps: int | None = None,
                 at_save: bool | None = None, tokenizer: Any = None, name: str | None = None,
                 **settings: Any) -> None:
        if every_steps is not None and (isinstance(every_steps, bool) or not isinstance(every_steps, int)
                                        or every_steps < 1):
            raise ConfigError(f"every_steps={every_steps!r}: give a whole number of steps >= 1, or None.")
        live_config(dict(settings))  # a wrong setting is refused now, not when training has begun
        self.trainer, self.dataset, self.every_steps = trainer, dataset, every_steps
        self.at_save = every_steps is None if at_save is None else at_save
        self.tokenizer, self.name, self.settings = tokenizer, name, settings
        self.evaluator: Evaluator | None = None
        self.reports: list[tuple[int, Any]] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Build the evaluator on the model the Trainer trains: the data is read and tokenized now."""
        if self.evaluator is None:
            tokenizer = self.tokenizer or getattr(self.trainer, "processing_class", None)
            if tokenizer is None:
                raise ConfigError("LlevalCallback needs the model's tokenizer: give the Trainer a processing_class, "
                                  "or the callback tokenizer=.")
            self.evaluator = Evaluator(self.trainer.model, tokenizer, self.dataset, name=self.name, **self.settings)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Every ``every_steps`` optimizer steps: evaluate."""
        if self.every_steps is not None and state.global_step % self.every_steps == 0:
            self._evaluate(state.global_step)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """At each checkpoint save (``at_save``): evaluate the weights just saved."""
        if self.at_save:
            self._evaluate(state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Finish the runs of the evaluator's own trackers (``log_to``)."""
        if self.evaluator is not None:
            self.evaluator.close()

    def _evaluate(self, step: int) -> None:
        if self.evaluator is None or any(done == step for done, _ in self.reports):  # a save on an evaluation step
            return
        report = self.evaluator(step=step)
        self.reports.append((step, report))
        self.trainer.log(trainer_metrics(report))
