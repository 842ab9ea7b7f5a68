"""The compiled pipeline carries the cluster settings users rely on (GPU pool, resources, retries,
secrets, non-root pods, caching) and typed, described parameters for the KFP UI."""
import pytest
import yaml

from domaintune.pipelines.compile import DEFAULT_PATH
from domaintune.pipelines.platform import RESOURCES, RETRIES

STAGES = ("ingest", "tokenize", "finetune", "evaluate", "register")


@pytest.fixture(scope="module")
def spec():
    with open(DEFAULT_PATH) as f:
        docs = list(yaml.safe_load_all(f))
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def executor(pipeline, stage):
    task = pipeline["root"]["dag"]["tasks"][f"{stage}-op"]
    return task, pipeline["deploymentSpec"]["executors"][f"exec-{stage}-op"]["container"]


def test_parameters_are_typed_with_defaults_and_descriptions(spec):
    pipeline, _ = spec
    params = pipeline["root"]["inputDefinitions"]["parameters"]
    assert {"train_data", "epochs", "lora", "data_version", "model_name", "max_flip_rate"} <= set(params)
    for name, p in params.items():
        assert p["parameterType"] in ("STRING", "NUMBER_INTEGER", "NUMBER_DOUBLE", "BOOLEAN"), name
        assert p.get("description"), f"{name} has no description"
        assert "defaultValue" in p or p.get("isOptional"), name


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_requests_limits_and_runs_as_the_image_user(spec, stage):
    pipeline, k8s = spec
    task, container = executor(pipeline, stage)
    res = container["resources"]
    cpu_req, cpu_lim, mem_req, mem_lim = RESOURCES[stage]
    assert res["resourceCpuRequest"] == cpu_req and res["resourceCpuLimit"] == cpu_lim
    assert res["resourceMemoryRequest"] == mem_req and res["resourceMemoryLimit"] == mem_lim
    ctx = k8s[f"exec-{stage}-op"]["securityContext"]
    assert ctx["runAsNonRoot"] is True and int(ctx["runAsUser"]) == 10001
    secrets = {s["secretName"] for s in k8s[f"exec-{stage}-op"]["secretAsEnv"]}
    assert "domaintune-s3" in secrets
    assert ("domaintune-mlflow" in secrets) == (stage in ("evaluate", "register"))
    inline = {e["name"] for e in container.get("env", [])}  # credentials only ever come from Secrets
    assert not inline & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"}


def test_finetune_requests_a_gpu_on_the_gpu_pool(spec):
    pipeline, k8s = spec
    _, container = executor(pipeline, "finetune")
    assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert container["resources"]["accelerator"]["resourceCount"] == "1"
    assert k8s["exec-finetune-op"]["nodeSelector"]["labels"] == {"domaintune/pool": "gpu"}
    assert k8s["exec-finetune-op"]["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
    for stage in ("ingest", "tokenize", "evaluate", "register"):
        assert "accelerator" not in executor(pipeline, stage)[1]["resources"]
        assert "nodeSelector" not in k8s[f"exec-{stage}-op"]


def test_retries_only_where_safe_and_caching_off_where_state_lives_outside(spec):
    pipeline, _ = spec
    for stage in STAGES:
        task, _ = executor(pipeline, stage)
        retries = task.get("retryPolicy", {}).get("maxRetryCount", 0)
        assert retries == RETRIES.get(stage, 0), stage
        if retries:
            assert task["retryPolicy"]["backoffDuration"] == "30s"
    tasks = pipeline["root"]["dag"]["tasks"]
    assert tasks["ingest-op"]["cachingOptions"].get("enableCache") is True
    assert not tasks["evaluate-op"]["cachingOptions"].get("enableCache")
    assert not tasks["register-op"]["cachingOptions"].get("enableCache")
    # data_version feeds ingest, so retraining on new data under the same URI never reuses old splits
    ingest_inputs = tasks["ingest-op"]["inputs"]["parameters"]
    assert ingest_inputs["data_version"]["componentInputParameter"] == "data_version"


def test_components_use_the_project_image_without_installing_kfp(spec):
    pipeline, _ = spec
    for stage in STAGES:
        _, container = executor(pipeline, stage)
        assert container["image"].startswith("ghcr.io/domaintune/domaintune:")
        assert "pip install" not in " ".join(container["command"] + container.get("args", []))
    assert executor(pipeline, "finetune")[1]["image"].endswith("-cuda")
