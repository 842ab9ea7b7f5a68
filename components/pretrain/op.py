"""KFP shells of the optional pretraining: the plan (does this run pretrain?) and the pretrain stage. Both
take PretrainParams' fields (tests/test_param_contract.py)."""
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from domaintune.components.core.images import GPU_IMAGE, IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def plan_op(
    base_model: str,
    s3_endpoint_url: str,
    domain_corpus: str,
    pretrain_on_train_text: bool,
    corpus_text_column: str,
    mlm_epochs: float,
    mlm_max_steps: int,
    mlm_learning_rate: float,
    mlm_probability: float,
    whole_word_masking: bool,
    mlm_batch_size: int,
    mlm_head_warmup_steps: int,
    max_length: int,
    precision: str,
    seed: int,
    checkpoint_dir: str,
    num_processes: int,
    plan: Output[Artifact],
) -> bool:
    """KFP conditions cannot say "or": this one-liner decides DAPT-or-TAPT, and records the pretraining
    parameters for register whichever branch runs."""
    from dataclasses import asdict

    from domaintune.components.core.runtime import stage_params
    from domaintune.components.io import storage
    from domaintune.components.pretrain.params import PretrainParams

    params = stage_params("pretrain", PretrainParams, locals())
    storage.write_json(plan.path, {"params": asdict(params), "wanted": params.wanted})
    return params.wanted


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def pretrain_op(
    splits: Input[Dataset],
    base_model: str,
    s3_endpoint_url: str,
    domain_corpus: str,
    pretrain_on_train_text: bool,
    corpus_text_column: str,
    mlm_epochs: float,
    mlm_max_steps: int,
    mlm_learning_rate: float,
    mlm_probability: float,
    whole_word_masking: bool,
    mlm_batch_size: int,
    mlm_head_warmup_steps: int,
    max_length: int,
    precision: str,
    seed: int,
    checkpoint_dir: str,
    num_processes: int,
    model: Output[Model],
    pretrain_report: Output[Artifact],
):
    import dataclasses
    import os

    from domaintune.components.core.runtime import run_stage, stage_params
    from domaintune.components.io.base_models import resolve_model
    from domaintune.components.pretrain.stage import PretrainParams, run_pretrain

    params = stage_params("pretrain", PretrainParams, locals())
    if params.checkpoint_dir:  # its own subfolder: finetune must never resume from a masked-LM checkpoint
        params = dataclasses.replace(params, checkpoint_dir=os.path.join(params.checkpoint_dir, "pretrain"))
    model_dir = run_stage("pretrain", resolve_model, params.base_model, params.s3_endpoint_url)
    run_stage("pretrain", run_pretrain, splits.path, model_dir, model.path, pretrain_report.path, params)
