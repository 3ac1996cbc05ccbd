"""deploy/: every deployment points at a real flow with parameters it accepts, and the Kubernetes
base job template renders, through prefect-kubernetes' own job configuration, into a Job that
asks for GPUs and mounts the run volume. (No cluster here: the rendering is what can be checked;
test_live_deployment.py deploys prefect.yaml to a live server.)"""

import asyncio
import importlib
import json
import pathlib

import pytest
import yaml

pytestmark = pytest.mark.cost(20)

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_deployments_name_real_flows_and_valid_parameters():
    spec = yaml.safe_load((ROOT / "deploy" / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {"default", "nightly", "gpu"}
    for deployment in deployments.values():
        path, name = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, name)
        assert flow.name == "train-and-sample"
        flow.validate_parameters(deployment["parameters"])  # raises on unknown or invalid values
    nightly = deployments["nightly"]
    assert nightly["schedules"] == [{"cron": "0 2 * * *", "timezone": "UTC"}]
    assert nightly["concurrency_limit"] == 1
    assert nightly["parameters"]["warm_start"] is True
    template = json.loads((ROOT / "deploy" / "kubernetes" / "base-job-template.json").read_text())
    allowed = set(template["variables"]["properties"])
    assert set(deployments["gpu"]["work_pool"]["job_variables"]) <= allowed


def _render_gpu_template(**values):
    """The GPU pool's job configuration for `values` (the template's defaults otherwise), by
    prefect-kubernetes' own renderer. It takes an API client (for block references): the test
    server's, shut down cleanly, rather than an ephemeral one stopped at interpreter exit."""
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads((ROOT / "deploy" / "kubernetes" / "base-job-template.json").read_text())
    defaults = {
        name: spec["default"]
        for name, spec in template["variables"]["properties"].items()
        if "default" in spec
    }
    return asyncio.run(
        KubernetesWorkerJobConfiguration.from_template_and_values(template, {**defaults, **values})
    )


def test_kubernetes_template_renders_a_gpu_job(prefect_server):
    configuration = _render_gpu_template(gpu_count=4, image="registry.example/diffusion-lib:1")
    pod = configuration.job_manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert container["image"] == "registry.example/diffusion-lib:1"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["runs"]["persistentVolumeClaim"]["claimName"] == "diffusion-runs"
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert configuration.job_manifest["spec"]["backoffLimit"] == 0


def test_multi_host_manifest_gives_each_pod_its_own_tf_config():
    documents = list(
        yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "train-workers.yaml").read_text())
    )
    service, job = documents
    assert service["spec"]["clusterIP"] == "None"
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "${JOB_COMPLETION_INDEX}" in script and "python -m diffusion_lib.training" in script
    hosts = script.count(".train-<run>:2222")
    assert hosts == job["spec"]["completions"]  # TF_CONFIG lists every worker of the job


KUBERNETES_VERSION = "1.30.0"


def test_rendered_manifests_are_valid_kubernetes_and_each_pod_gets_its_own_task_index(
    prefect_server,
):
    """The Indexed Job and its Service for a run named r1 on 2 hosts, and the job the GPU work
    pool's template renders, validate (strict: no unknown fields) against the Kubernetes
    1.30 API schemas, offline. Each pod's TF_CONFIG, computed by running the container's own
    shell script with the index the Job gives it, names both hosts in the same order and its
    own task index; both pods request the GPUs, start in the image's working directory and
    mount the run directory from the shared claim."""
    import subprocess

    import kubernetes_validate

    text = (ROOT / "deploy" / "kubernetes" / "train-workers.yaml").read_text()
    documents = list(yaml.safe_load_all(text.replace("<run>", "r1")))
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    job = documents[1]
    container = job["spec"]["template"]["spec"]["containers"][0]
    configs = []
    for index in range(job["spec"]["completions"]):
        script = container["args"][0].split("exec python")[0] + 'printf %s "$TF_CONFIG"'
        out = subprocess.run(
            ["/bin/sh", "-c", script],
            env={"JOB_COMPLETION_INDEX": str(index), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        )
        configs.append(json.loads(out.stdout))
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in (0, 1)]
    assert (
        configs[0]["cluster"]
        == configs[1]["cluster"]
        == {"worker": ["train-r1-0.train-r1:2222", "train-r1-1.train-r1:2222"]}
    )
    assert container["workingDir"] == "/opt/diffusion-lib"
    assert container["resources"]["limits"]["nvidia.com/gpu"] > 0
    assert "--run-dir /runs/r1" in container["args"][0]
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["runs"]["persistentVolumeClaim"]["claimName"] == "diffusion-runs"

    rendered = _render_gpu_template(gpu_count=2, image="registry.example/diffusion-lib:1")
    manifest = {"apiVersion": "batch/v1", "kind": "Job", **rendered.job_manifest}
    manifest["metadata"] = {"name": "train-r1", **manifest.get("metadata", {})}
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_the_ray_cluster_manifest_serves_the_gpu_deployment():
    """deploy/kubernetes/ray-cluster.yaml (KubeRay's RayCluster): its pod templates validate
    strictly against the Kubernetes schemas, offline (the RayCluster resource itself is
    KubeRay's; its own fields are checked by name and type, as its v1 API defines them); every
    pod runs the deployment's image and mounts the run volume the flow's pod mounts; its GPU
    workers offer 16 GPUs; and the gpu deployment's RAY_ADDRESS is the head's Ray Client port
    under the service name KubeRay gives it."""
    import kubernetes_validate

    cluster = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "ray-cluster.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    assert set(spec) <= {
        "rayVersion",
        "headGroupSpec",
        "workerGroupSpecs",
        "enableInTreeAutoscaling",
    }
    head, groups = spec["headGroupSpec"], spec["workerGroupSpecs"]
    assert set(head) <= {"rayStartParams", "template", "serviceType", "headService"}
    worker_fields = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams"}
    for group in [head, *groups]:
        # KubeRay passes them to `ray start` as a map of strings.
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
        template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}}
        kubernetes_validate.validate(
            {**template, "template": group["template"]}, KUBERNETES_VERSION, strict=True
        )
    for group in groups:
        assert set(group) <= worker_fields | {"template"}
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]

    deployments = {
        d["name"]: d
        for d in yaml.safe_load((ROOT / "deploy" / "prefect.yaml").read_text())["deployments"]
    }
    gpu = deployments["gpu"]["work_pool"]["job_variables"]
    template = json.loads((ROOT / "deploy" / "kubernetes" / "base-job-template.json").read_text())
    claim = template["variables"]["properties"]["runs_volume_claim"]["default"]
    gpus = 0
    for group in [head, *groups]:
        pod = group["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            assert container["image"] == gpu["image"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert volumes[mounts["/runs"]]["persistentVolumeClaim"]["claimName"] == claim
            if group is not head:
                gpus += group["replicas"] * container["resources"]["limits"].get(
                    "nvidia.com/gpu", 0
                )
    assert gpus >= 16
    (client,) = [
        p["containerPort"]
        for p in head["template"]["spec"]["containers"][0]["ports"]
        if p["name"] == "client"
    ]
    assert gpu["env"]["RAY_ADDRESS"] == f"ray://{cluster['metadata']['name']}-head-svc:{client}"
    assert gpu["gpu_count"] == 0  # the flow's pod drives the cluster; the GPUs are the cluster's
