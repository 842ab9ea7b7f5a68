"""KFP shells of the finetune stage, from the base model or from the pretrained (adapted) encoder. Both take
FinetuneParams' fields (tests/test_param_contract.py); KFP has no optional input artifacts that kfp.local
resolves, hence two shells."""
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from domaintune.components.core.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def finetune_op(
    tokens: Input[Dataset],
    base_model: str,
    s3_endpoint_url: str,
    epochs: float,
    learning_rate: float,
    batch_size: int,
    weight_decay: float,
    warmup_ratio: float,
    early_stopping_patience: int,
    seed: int,
    lora: bool,
    lora_r: int,
    lora_alpha: int,
    lora_dropout: float,
    precision: str,
    freeze_embeddings: bool,
    checkpoint_dir: str,
    model: Output[Model],
    history: Output[Artifact],
    training_metrics: Output[Metrics],
):
    from domaintune.components.core.runtime import log_metrics, run_stage, stage_params
    from domaintune.components.finetune.stage import FinetuneParams, run_finetune
    from domaintune.components.io.base_models import resolve_model

    params = stage_params("finetune", FinetuneParams, locals())
    model_dir = run_stage("finetune", resolve_model, params.base_model, params.s3_endpoint_url)
    result = run_stage("finetune", run_finetune, tokens.path, model_dir, model.path, history.path, params)
    log_metrics(training_metrics, {**{f"validation_{k}": v for k, v in result["validation"].items()},
                                   "examples_per_second": result["examples_per_second"]})


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def finetune_adapted_op(
    tokens: Input[Dataset],
    adapted_model: Input[Model],
    base_model: str,
    s3_endpoint_url: str,
    epochs: float,
    learning_rate: float,
    batch_size: int,
    weight_decay: float,
    warmup_ratio: float,
    early_stopping_patience: int,
    seed: int,
    lora: bool,
    lora_r: int,
    lora_alpha: int,
    lora_dropout: float,
    precision: str,
    freeze_embeddings: bool,
    checkpoint_dir: str,
    model: Output[Model],
    history: Output[Artifact],
    training_metrics: Output[Metrics],
):
    from domaintune.components.core.runtime import log_metrics, run_stage, stage_params
    from domaintune.components.finetune.stage import FinetuneParams, run_finetune

    params = stage_params("finetune", FinetuneParams, locals())
    result = run_stage("finetune", run_finetune, tokens.path, adapted_model.path, model.path, history.path, params)
    log_metrics(training_metrics, {**{f"validation_{k}": v for k, v in result["validation"].items()},
                                   "examples_per_second": result["examples_per_second"]})
