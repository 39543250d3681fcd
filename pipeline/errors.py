"""One error hierarchy for the whole pipeline.

Every error says what failed and what to check, so that a CLI user, an Airflow log reader and a test all
see the same one-line explanation (Feast-style: the message is composed from parts, never ad hoc).
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class: ``what`` failed; ``hint`` says what to check."""

    def __init__(self, what: str, hint: str | None = None) -> None:
        self.what = what
        self.hint = hint
        super().__init__(f"{what}" + (f" (check: {hint})" if hint else ""))


class ConfigError(PipelineError):
    """A setting is missing, malformed or out of range."""


class DatabaseError(PipelineError):
    """Postgres could not be reached or a statement failed."""


class EmbeddedPostgresError(DatabaseError):
    """The embedded PostgreSQL server could not be started, stopped or found."""


class MigrationError(DatabaseError):
    """The schema is missing or at the wrong revision."""


class InputDataError(PipelineError):
    """Input data is malformed beyond what quarantine can absorb (e.g. a missing file or column)."""


class ValidationFailed(PipelineError):
    """Too large a share of the input failed validation; the run stops and the live lists stay."""


class QualityGateFailed(PipelineError):
    """The output quality gate refused a run; the previously published run stays live."""


class ModelError(PipelineError):
    """Training, loading or scoring a model failed."""


class NonFiniteWeightsError(ModelError):
    """A model ended training with NaN or inf weights; it is never saved or published."""


class PublishError(PipelineError):
    """Publishing or rolling back a run failed; the live run is unchanged."""
