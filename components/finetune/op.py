"""KFP shells of the finetune stage, from the base model or from the pretrained (adapted) encoder. Both take
FinetuneParams' fields (tests/test_param_contract.py); KFP has no optional input artifacts that kfp.local
resolves, hence two shells. Compiled for Kubeflow Trainer (DOMAINTUNE_TRAINER_NODES), a shell submits the
training as a TrainJob and collects its model (training/trainjob_run.py) instead of training in its own pod."""
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
    num_processes: int,
    gradient_accumulation_steps: int,
    model: Output[Model],
    history: Output[Artifact],
    training_metrics: Output[Metrics],
):
    from domaintune.components.core.runtime import log_metrics, run_stage, stage_params
    from domaintune.components.finetune.stage import FinetuneParams, run_finetune
    from domaintune.components.io.base_models import resolve_model

    from domaintune.components.training import trainjob, trainjob_run

    params = stage_params("finetune", FinetuneParams, locals())
    if trainjob.requested():  # compiled with DOMAINTUNE_TRAINER_NODES: the nodes of a Kubeflow TrainJob train
        result = run_stage("finetune", trainjob_run.run_on_trainer, tokens.uri, params.base_model, model.path,
                           history.path, params, model.uri)
    else:
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
    num_processes: int,
    gradient_accumulation_steps: int,
    model: Output[Model],
    history: Output[Artifact],
    training_metrics: Output[Metrics],
):
    from domaintune.components.core.runtime import log_metrics, run_stage, stage_params
    from domaintune.components.finetune.stage import FinetuneParams, run_finetune

    from domaintune.components.training import trainjob, trainjob_run

    params = stage_params("finetune", FinetuneParams, locals())
    if trainjob.requested():  # compiled with DOMAINTUNE_TRAINER_NODES: the nodes of a Kubeflow TrainJob train
        result = run_stage("finetune", trainjob_run.run_on_trainer, tokens.uri, adapted_model.uri, model.path,
                           history.path, params, model.uri)
    else:
        result = run_stage("finetune", run_finetune, tokens.path, adapted_model.path, model.path, history.path,
                           params)
    log_metrics(training_metrics, {**{f"validation_{k}": v for k, v in result["validation"].items()},
                                   "examples_per_second": result["examples_per_second"]})
