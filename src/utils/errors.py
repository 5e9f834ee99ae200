"""Errors a user can act on: the CLI prints their message on one line and exits 2."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class CSIError(Exception):
    """Base of every error caused by the user's input (config, labels, images, checkpoints)."""


class ConfigError(CSIError):
    """A config file, --set or environment value that is missing, misspelt or out of range."""


class DataError(CSIError):
    """A labels CSV row or an image file that cannot be used."""


class MaskError(DataError):
    """A lung mask file that is missing, empty, not binary, of another size than its image, or named
    inconsistently with the rest of the mask directory."""


class CheckpointError(CSIError):
    """A checkpoint that is missing, corrupt or belongs to another model."""


class TrainingDiverged(CSIError):
    """Too many consecutive optimizer steps with a non-finite loss or gradient."""


class TrialFailed(CSIError):
    """A search trial that ran out of memory, diverged or got values its training refused; the study goes on."""


class ExportError(CSIError):
    """A model that cannot be exported faithfully, or an exported model that cannot be used."""


class OutputError(CSIError):
    """A file that cannot be written: disk full, read-only filesystem, missing permission."""


class StoppedOnAnotherRank(CSIError):
    """A distributed run stopped here because rank 0 stopped it (its own error says why)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C or SIGTERM after writing a checkpoint; `run_dir` resumes it (exit
    code 130). `is_main`: raised on the rank that wrote it (the one that tells how to resume)."""

    def __init__(self, message: str, run_dir, is_main: bool = True) -> None:
        super().__init__(message)
        self.run_dir, self.is_main = run_dir, is_main
