"""Every error kakugo raises on purpose, in one place: the CLI (and jobs/distill.py) turn
them into exit codes, stages raise them without knowing of each other. Each message names
what was wrong, where, and what is allowed.

  BAD_INPUT     exit 2: the config, a language, a model, a source or a push cannot be used
  RUN_FAILURES  exit 1 (or 3 for some languages): the run met storage, data or a teacher
                that could not do their part
"""

from __future__ import annotations

from kakugo.config import ConfigError


class LanguageError(ValueError):
    """Input that does not name exactly one language; the message lists what would."""


class ModelError(ValueError):
    """A model source that cannot be used; the message says which and why."""


class RunConflictError(RuntimeError):
    """The output root holds a run made with a different configuration."""


class ServeConfigError(ValueError):
    """What to serve cannot be worked out from the config; the message says why."""


class ContextSourceError(ValueError):
    """The context source cannot give texts for a language; the message says why."""


class TranslationSourceError(ValueError):
    """The translation source is missing or not in the expected shape; the message says where."""


class FilterSetupError(ValueError):
    """A filter cannot run as configured (e.g. its model cannot be found)."""


class EvalDataError(ValueError):
    """Evaluation data that exists but cannot be used; the message says which and why."""


class PublishError(ValueError):
    """Something of a language cannot be published; the message says what and where."""


class StorageError(RuntimeError):
    """The output root cannot be read or written; the message names the location."""


class TrainingDataError(ValueError):
    """The language's dataset cannot give a single training step as configured."""


class TeacherPassError(RuntimeError):
    """An engine pass could not get its answers from the teacher."""


class ClusterAuthError(ValueError):
    """The cluster to join wants a token this process was not given."""


class RunResultsError(FileNotFoundError):
    """The output root lacks what a table needs; the message says which stage writes it."""


BAD_INPUT = (ConfigError, LanguageError, ModelError, RunConflictError, ServeConfigError,
             ContextSourceError, TranslationSourceError, FilterSetupError, PublishError,
             ClusterAuthError)
RUN_FAILURES = (StorageError, TrainingDataError, TeacherPassError)
