"""The compiled pipeline carries the cluster settings users rely on (GPU pool, resources, retries,
secrets, non-root pods, caching) and typed, described parameters for the KFP UI."""
import pytest
import yaml

from domaintune.pipelines.compile import DEFAULT_PATH
from domaintune.pipelines.platform import RESOURCES, RETRIES

# task name in the compiled spec -> stage (the tail after fine-tuning is wired in both branches)
TASKS = {"ingest-op": "ingest", "tokenize-op": "tokenize", "pretrain-op": "pretrain", "finetune-op": "finetune",
         "finetune-adapted-op": "finetune", "evaluate-op": "evaluate", "evaluate-op-2": "evaluate",
         "export-op": "export", "export-op-2": "export", "register-op": "register", "register-op-2": "register",
         "plan-op": "plan", "champion-op": "champion", "champion-op-2": "champion"}
GPU = ("pretrain-op", "finetune-op", "finetune-adapted-op")


@pytest.fixture(scope="module")
def spec():
    with open(DEFAULT_PATH) as f:
        docs = list(yaml.safe_load_all(f))
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def all_tasks(pipeline):
    dags = [pipeline["root"]["dag"]] + [c["dag"] for c in pipeline["components"].values() if "dag" in c]
    return {name: task for dag in dags for name, task in dag["tasks"].items()}


def executor(pipeline, task_name):
    return all_tasks(pipeline)[task_name], pipeline["deploymentSpec"]["executors"][f"exec-{task_name}"]["container"]


def test_every_task_is_known(spec):
    pipeline, _ = spec
    names = {n for n, t in all_tasks(pipeline).items() if "componentRef" in t and n.endswith(("-op", "-op-2"))}
    assert names == set(TASKS)


def test_parameters_are_typed_with_defaults_and_descriptions(spec):
    pipeline, _ = spec
    params = pipeline["root"]["inputDefinitions"]["parameters"]
    assert {"train_data", "epochs", "lora", "data_version", "model_name", "max_flip_rate"} <= set(params)
    for name, p in params.items():
        assert p["parameterType"] in ("STRING", "NUMBER_INTEGER", "NUMBER_DOUBLE", "BOOLEAN"), name
        assert p.get("description"), f"{name} has no description"
        assert "defaultValue" in p or p.get("isOptional"), name


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_stage_has_requests_limits_and_runs_as_the_image_user(spec, name):
    pipeline, k8s = spec
    stage = TASKS[name]
    task, container = executor(pipeline, name)
    res = container["resources"]
    cpu_req, cpu_lim, mem_req, mem_lim = RESOURCES[stage]
    assert res["resourceCpuRequest"] == cpu_req and res["resourceCpuLimit"] == cpu_lim
    assert res["resourceMemoryRequest"] == mem_req and res["resourceMemoryLimit"] == mem_lim
    ctx = k8s[f"exec-{name}"]["securityContext"]
    assert ctx["runAsNonRoot"] is True and int(ctx["runAsUser"]) == 10001
    secrets = {s["secretName"] for s in k8s[f"exec-{name}"]["secretAsEnv"]}
    assert "domaintune-s3" in secrets
    assert ("domaintune-mlflow" in secrets) == (stage in ("champion", "evaluate", "register"))
    inline = {e["name"] for e in container.get("env", [])}  # credentials only ever come from Secrets
    assert not inline & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"}


def test_training_stages_request_a_gpu_on_the_gpu_pool(spec):
    pipeline, k8s = spec
    for name in TASKS:
        _, container = executor(pipeline, name)
        if name in GPU:
            assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert container["resources"]["accelerator"]["resourceCount"] == "1"
            assert k8s[f"exec-{name}"]["nodeSelector"]["labels"] == {"domaintune/pool": "gpu"}
            assert k8s[f"exec-{name}"]["tolerations"] == [
                {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
            assert container["image"].endswith("-cuda")
        else:
            assert "accelerator" not in container["resources"], name
            assert "nodeSelector" not in k8s[f"exec-{name}"], name


def test_retries_only_where_safe_and_caching_off_where_state_lives_outside(spec):
    pipeline, _ = spec
    tasks = all_tasks(pipeline)
    for name, stage in TASKS.items():
        retries = tasks[name].get("retryPolicy", {}).get("maxRetryCount", 0)
        assert retries == RETRIES.get(stage, 0), name
        if retries:
            assert tasks[name]["retryPolicy"]["backoffDuration"] == "30s"
        cached = tasks[name]["cachingOptions"].get("enableCache", False)
        # evaluate is cached: its key carries the champion version the uncached champion task resolved
        assert cached == (stage not in ("champion", "register")), name
    for branch in ("", "-2"):
        assert tasks[f"champion-op{branch}"]["dependentTasks"] == [f"finetune{'-adapted' if branch == '' else ''}-op"]
        evaluate = tasks[f"evaluate-op{branch}"]["inputs"]["parameters"]["champion_version"]
        assert evaluate["taskOutputParameter"]["producerTask"] == f"champion-op{branch}"
    # data_version feeds ingest, so retraining on new data under the same URI never reuses old splits
    assert tasks["ingest-op"]["inputs"]["parameters"]["data_version"]["componentInputParameter"] == "data_version"


def test_pretraining_is_a_condition_and_the_summary_comes_from_either_branch(spec):
    pipeline, _ = spec
    branches = pipeline["components"]["comp-condition-branches-1"]["dag"]["tasks"]
    conditions = sorted(t["triggerPolicy"]["condition"] for t in branches.values())
    assert len(conditions) == 2 and all("plan-op" in c for c in conditions)
    assert pipeline["root"]["outputDefinitions"]["parameters"]["Output"]["parameterType"] == "STRING"


def test_components_use_the_project_image_without_installing_kfp(spec):
    pipeline, _ = spec
    for name in TASKS:
        _, container = executor(pipeline, name)
        assert container["image"].startswith("ghcr.io/domaintune/domaintune:")
        assert "pip install" not in " ".join(container["command"] + container.get("args", []))
