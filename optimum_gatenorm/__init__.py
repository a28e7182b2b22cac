"""optimum-gatenorm: data-free pruning of self-attention sublayers (Gate-Norm, arXiv:2512.20636).

Importing this package registers the `gatenorm` method with transformers, so
`AutoModelForCausalLM.from_pretrained` loads pruned checkpoints with their pruned structure.
"""

from .adapters import ArchitectureAdapter, describe_architectures, get_adapter, register_adapter, supported_model_types
from .checkpoints.modeling import GateNormQuantizer, load_pruned, prune_model, save_pruned
from .checkpoints.models import BUILTIN_MODELS, DEFAULT_MODEL, convert_gguf, resolve_model
from .checkpoints.record import PrunedAttentionConfig, get_pruned_layers
from .checkpoints.tensors import AttentionWeights
from .criteria import (
    DEFAULT_CRITERION,
    Calibration,
    available_criteria,
    get_criterion,
    register_criterion,
    register_model_criterion,
)
from .errors import (
    ExportError,
    GateNormError,
    InvalidCheckpointError,
    InvalidConfigError,
    MissingExtraError,
    ModelNotFoundError,
    OutputExistsError,
    OutputInUseError,
    OutputNotWritableError,
    UnsupportedModelError,
)
from .evaluation.compare import CompareConfig, CompareResult, compare, compare_criteria
from .evaluation.perplexity import PerplexityResult, evaluate_perplexity, perplexity
from .evaluation.retrieval import RetrievalConfig, RetrievalResult, evaluate_retrieval, retrieval_accuracy
from .exporters import export_gguf, export_nemotron_nas, export_onnx
from .pipeline import PruneResult, prune_and_save
from .pruning.configuration import GateNormConfig
from .pruning.pruner import GateNormPruner, select_layers
from .report import PruningReport, ScoreReport
from .speed.cost_model import ModelCost, ideal_speedup
from .speed.measuring import measure_attention_shares
from .speed.planning import SpeedupTarget, plan_num_layers, predict_speedup
from .speed.shares import AttentionShares
from .speed.throughput import BenchmarkResult, BenchmarkSettings, run_benchmark
from .version import __version__


__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_CRITERION",
    "DEFAULT_MODEL",
    "ArchitectureAdapter",
    "AttentionShares",
    "AttentionWeights",
    "BenchmarkResult",
    "BenchmarkSettings",
    "Calibration",
    "CompareConfig",
    "CompareResult",
    "ExportError",
    "GateNormConfig",
    "GateNormError",
    "GateNormPruner",
    "GateNormQuantizer",
    "InvalidCheckpointError",
    "InvalidConfigError",
    "MissingExtraError",
    "ModelCost",
    "ModelNotFoundError",
    "OutputExistsError",
    "OutputInUseError",
    "OutputNotWritableError",
    "PerplexityResult",
    "PruneResult",
    "PrunedAttentionConfig",
    "PruningReport",
    "RetrievalConfig",
    "RetrievalResult",
    "ScoreReport",
    "SpeedupTarget",
    "UnsupportedModelError",
    "__version__",
    "available_criteria",
    "compare",
    "compare_criteria",
    "convert_gguf",
    "describe_architectures",
    "evaluate_perplexity",
    "evaluate_retrieval",
    "export_gguf",
    "export_nemotron_nas",
    "export_onnx",
    "get_adapter",
    "get_criterion",
    "get_pruned_layers",
    "ideal_speedup",
    "load_pruned",
    "measure_attention_shares",
    "perplexity",
    "plan_num_layers",
    "predict_speedup",
    "prune_and_save",
    "prune_model",
    "register_adapter",
    "register_criterion",
    "register_model_criterion",
    "resolve_model",
    "retrieval_accuracy",
    "run_benchmark",
    "save_pruned",
    "select_layers",
    "supported_model_types",
]
