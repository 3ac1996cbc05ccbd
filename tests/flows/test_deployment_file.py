"""deploy/prefect.yaml: every deployment points at a real flow with parameters it accepts.

(Only the file is checked here; deploying it to a live server and worker is still to come.)"""

import importlib
import pathlib

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_deployments_name_real_flows_and_valid_parameters():
    spec = yaml.safe_load((ROOT / "deploy" / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {"default", "nightly"}
    for deployment in deployments.values():
        path, name = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, name)
        assert flow.name == "train-and-sample"
        flow.validate_parameters(deployment["parameters"])  # raises on unknown or invalid values
    nightly = deployments["nightly"]
    assert nightly["schedules"] == [{"cron": "0 2 * * *", "timezone": "UTC"}]
    assert nightly["concurrency_limit"] == 1
