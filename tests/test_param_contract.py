"""Each parameter is written once: a stage's Params dataclass holds its default and validation, the pipeline
signature reads its defaults from there, and every KFP shell declares exactly its stage's Params fields (plus
its artifacts and the few wired values named below). A shell that drifts from its stage fails here."""
import dataclasses

import pytest

from domaintune.components.core.params import field_names
from domaintune.components.evaluate.op import champion_op, evaluate_op
from domaintune.components.evaluate.stage import EvaluateParams
from domaintune.components.export.op import export_op
from domaintune.components.export.stage import ExportParams
from domaintune.components.finetune.op import finetune_adapted_op, finetune_op
from domaintune.components.finetune.stage import FinetuneParams
from domaintune.components.ingest.op import ingest_op
from domaintune.components.ingest.stage import IngestParams
from domaintune.components.pretrain.op import pretrain_op, plan_op
from domaintune.components.pretrain.stage import PretrainParams
from domaintune.components.register.op import register_op
from domaintune.components.register.stage import RegisterParams
from domaintune.components.tokenize.op import tokenize_op
from domaintune.components.tokenize.stage import TokenizeParams
from domaintune.pipelines.params import pipeline_params
from domaintune.pipelines.training_pipeline import training_pipeline

# shell -> (its stage's Params, inputs that are neither Params fields nor artifacts: values wired from tasks)
SHELLS = {
    ingest_op: (IngestParams, set()),
    tokenize_op: (TokenizeParams, set()),
    plan_op: (PretrainParams, set()),
    pretrain_op: (PretrainParams, set()),
    finetune_op: (FinetuneParams, set()),
    finetune_adapted_op: (FinetuneParams, set()),
    export_op: (ExportParams, set()),
    evaluate_op: (EvaluateParams, {"champion_version"}),
    register_op: (RegisterParams, {"pipeline_run_id"}),
}
# One-line control tasks take a subset of a stage's parameters.
CONTROL = {champion_op: {"model_name", "mlflow_tracking_uri"}}
PARAMS = sorted({cls for cls, _ in SHELLS.values()}, key=lambda c: c.__name__)
KFP_TYPES = {str: "STRING", int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", bool: "BOOLEAN"}


def parameter_inputs(op) -> dict:
    return dict(op.component_spec.inputs or {})


def value_inputs(op) -> set[str]:
    """Inputs that are parameters (not artifacts)."""
    return {name for name, spec in parameter_inputs(op).items() if spec.type in ("String", "Integer", "Float", "Boolean")}


@pytest.mark.parametrize("op", list(SHELLS), ids=lambda op: op.name)
def test_each_shell_declares_exactly_its_stages_params(op):
    cls, wired = SHELLS[op]
    declared = value_inputs(op) - wired
    fields = set(field_names(cls))
    assert declared == fields, (f"{op.name} drifts from {cls.__name__}: only in the shell {sorted(declared - fields)}, "
                                f"only in the Params {sorted(fields - declared)}")


@pytest.mark.parametrize("op", list(SHELLS), ids=lambda op: op.name)
def test_shell_input_types_match_the_params_annotations(op):
    cls, _ = SHELLS[op]
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    kfp = {"str": "String", "int": "Integer", "float": "Float", "bool": "Boolean"}
    for name in field_names(cls):
        assert parameter_inputs(op)[name].type == kfp[hints[name]], (op.name, name)


def test_control_tasks_take_a_subset_of_the_pipeline_parameters():
    names = {p.name for p in pipeline_params()}
    for op, expected in CONTROL.items():
        assert value_inputs(op) == expected and expected <= names


@pytest.mark.parametrize("cls", PARAMS, ids=lambda c: c.__name__)
def test_pipeline_defaults_are_the_params_defaults(cls):
    pipeline = {p.name: p.default for p in pipeline_params()}
    for f in dataclasses.fields(cls):
        assert f.name in pipeline, f"{cls.__name__}.{f.name} is not a pipeline parameter"
        assert f.default is not dataclasses.MISSING, f"{cls.__name__}.{f.name} has no default"
        assert pipeline[f.name] == f.default and type(pipeline[f.name]) is type(f.default), (cls.__name__, f.name)


def test_every_pipeline_parameter_belongs_to_a_stage():
    owned = {name for cls in PARAMS for name in field_names(cls)}
    orphans = {p.name for p in pipeline_params()} - owned
    assert not orphans, f"pipeline parameters no stage takes: {sorted(orphans)}"


def test_a_parameter_shared_by_stages_has_one_default():
    seen: dict[str, tuple[str, object]] = {}
    for cls in PARAMS:
        for f in dataclasses.fields(cls):
            if f.name in seen:
                assert seen[f.name][1] == f.default, f"{f.name}: {seen[f.name][0]} and {cls.__name__} differ"
            seen[f.name] = (cls.__name__, f.default)


def test_every_parameter_has_a_description_in_the_compiled_interface():
    for name, spec in training_pipeline.component_spec.inputs.items():
        assert spec.description, f"pipeline parameter {name} has no description in the docstring"


@pytest.mark.parametrize("cls", PARAMS, ids=lambda c: c.__name__)
def test_defaults_are_valid(cls):
    cls()  # every stage's defaults pass its own validation
