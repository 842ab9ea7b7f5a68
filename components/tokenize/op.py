"""KFP shell of the tokenize stage: its inputs are TokenizeParams' fields (tests/test_param_contract.py)."""
from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from domaintune.components.core.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def tokenize_op(
    splits: Input[Dataset],
    base_model: str,
    max_length: int,
    max_target_length: int,
    s3_endpoint_url: str,
    tokens: Output[Dataset],
):
    from domaintune.components.core.runtime import run_stage, stage_params
    from domaintune.components.io.base_models import resolve_model
    from domaintune.components.tokenize.stage import TokenizeParams, run_tokenize

    params = stage_params("tokenize", TokenizeParams, locals())
    model_dir = run_stage("tokenize", resolve_model, params.base_model, params.s3_endpoint_url)
    stats = run_stage("tokenize", run_tokenize, splits.path, model_dir, tokens.path, params)
    tokens.metadata.update({name: s["examples"] for name, s in stats["splits"].items()})
