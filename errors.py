"""Every failure planforge reports to a user has its own class and says what to do.

The CLI prints ``str(error)`` and exits with status 2; a traceback from deep
inside a library is a bug.
"""


class PlanforgeError(Exception):
    """Base class: a problem with the user's input or environment, with a fix in the message."""


class ModelNotFoundError(PlanforgeError):
    """The model directory is missing, empty, or not a Hugging Face model."""


class CheckpointError(ModelNotFoundError):
    """The weights are incomplete, truncated, corrupt, or not plain tensors."""


class UnsupportedArchitectureError(PlanforgeError):
    """The model's architecture has no exporter adapter."""


class UnsupportedConfigError(PlanforgeError):
    """A supported architecture uses a config option the exporter cannot express."""


class ExportMismatchError(PlanforgeError):
    """The exported graph's logits do not reproduce the source model's; nothing was written."""


class AdapterError(PlanforgeError):
    """A LoRA adapter directory could not be loaded or merged."""


class OutputExistsError(PlanforgeError):
    """The output directory already exists and --force was not given."""


class OutputWriteError(PlanforgeError):
    """The output could not be written (disk full, no permission, read-only file system); nothing was left."""


class CompiledModelError(PlanforgeError):
    """A compiled model directory is missing files, or its model.onnx is corrupt or truncated."""


class PromptTooLongError(PlanforgeError):
    """A prompt does not fit in the model's exported maximum sequence length."""


class TokenizerMissingError(PlanforgeError):
    """Text was given but the compiled model has no tokenizer."""


class BackendUnavailableError(PlanforgeError):
    """The requested backend, device or execution provider is not installed or cannot run this model."""


class UnknownBackendError(PlanforgeError):
    """--backend names no registered backend."""


class BackendMismatchError(PlanforgeError):
    """The compiled model was built for another backend (its manifest target) than the one requested."""


class ContribOpUnavailableError(BackendUnavailableError):
    """The installed ONNX Runtime lacks a contrib op the lowered model uses."""


class PluginVersionError(CompiledModelError):
    """A lowered graph uses a plugin op, or an op version, this planforge does not have."""


class EngineMismatchError(CompiledModelError):
    """A TensorRT engine built for another TensorRT version or GPU, or one TensorRT cannot deserialize
    (a plugin it names is not registered)."""


class EngineBuildError(PlanforgeError):
    """TensorRT could not parse the graph or build the engine, or an engine setting is out of range."""


class UnsupportedOpError(CompiledModelError):
    """A graph node that the backend running it has no implementation for."""


class LoweringError(PlanforgeError):
    """A graph a lowering rule cannot lower (unknown structure or dtype), without --allow-partial."""


class ComparisonError(PlanforgeError):
    """Two models cannot be compared (different vocabularies, no prompts, ...)."""


class TextFileError(PlanforgeError):
    """A text input (prompt file, perplexity text, calibration text) is missing or not UTF-8."""


class InvalidPromptError(PlanforgeError):
    """A prompt is empty or holds token ids outside the vocabulary."""


class InvalidGenerationConfigError(PlanforgeError):
    """A sampling or generation setting is out of range."""


class SparsityError(PlanforgeError):
    """Base class for contextual-sparsity problems (importance, predictor training, the graph pass)."""


class InvalidSparsityError(SparsityError):
    """A sparsity fraction is outside [0, 1), or a sparsity option is otherwise unusable."""


class PredictorError(SparsityError):
    """A sparsity predictor file is corrupt, truncated, or not a planforge predictor."""


class PredictorNotFoundError(PredictorError):
    """The sparsity predictor file does not exist."""


class PredictorMismatchError(PredictorError):
    """The predictor was trained for a model with other dimensions than the one given."""


class CalibrationDataError(SparsityError):
    """Calibration text for importance scoring is missing, empty, or too short."""


class ImportanceFileError(SparsityError):
    """An importance file is missing, corrupt, or not written by `planforge sparsity importance`."""
