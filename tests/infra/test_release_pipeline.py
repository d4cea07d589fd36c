"""The release pipeline (.github/workflows/release.yml) and its scripts, without AWS or GitHub.

- the workflow's shape: least-privilege permissions, OIDC only, pinned actions, the job graph
  (lint -> test -> build -> staging -> E2E -> approval -> production), rollback steps, and the
  names it derives (cluster, repositories, services, GPU groups) against the Terraform;
- .github/scripts/deploy.py on fake ECS / EC2 / Auto Scaling clients that check every request
  against botocore's models of the real APIs: task definition rendering, the rollout wait
  (completed, circuit-breaker rollback), launch template versions and instance refreshes, and
  the rollback to a snapshot;
- .github/scripts/smoke.py against a local HTTP server that answers like the API.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import itertools
import json
import re
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import botocore.session
import pytest
import yaml
from botocore.exceptions import ClientError
from botocore.validate import validate_parameters

from tests.infra.hcl_config import TERRAFORM, Config, load_config

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"
SCRIPTS = ROOT / ".github" / "scripts"
REPO = "123456789012.dkr.ecr.ap-northeast-2.amazonaws.com/pinksea-staging/pinksea"
GPU_REPO = "123456789012.dkr.ecr.ap-northeast-2.amazonaws.com/pinksea-staging/gpu-worker"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"release_{name}", SCRIPTS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


deploy = _load("deploy")
smoke = _load("smoke")


# ----------------------------------------------------------------------------------------------
# The workflow
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    doc: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc


@pytest.fixture(scope="module")
def tf() -> Config:
    return load_config()


def _steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps", []))


def _uses(job: dict[str, Any]) -> list[str]:
    return [s["uses"] for s in _steps(job) if "uses" in s]


def test_triggers_permissions_and_concurrency(workflow: dict[str, Any]) -> None:
    assert set(workflow["on"]) == {"push", "pull_request", "workflow_dispatch"}
    assert workflow["on"]["push"]["branches"] == ["main"]
    assert workflow["permissions"] == {"contents": "read"}
    assert "group" in workflow["concurrency"]
    assert "pull_request" in str(workflow["concurrency"]["cancel-in-progress"])


def test_every_action_is_pinned() -> None:
    uses = re.findall(r"uses:\s*([^\s#]+)", WORKFLOW.read_text())
    assert uses
    for ref in uses:
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@(v\d+|[0-9a-f]{40})", ref), ref


def test_aws_only_through_oidc_in_an_environment(workflow: dict[str, Any]) -> None:
    text = WORKFLOW.read_text()
    assert "aws-access-key-id" not in text and "aws-secret-access-key" not in text
    for name, job in workflow["jobs"].items():
        assumes = any(u.startswith("aws-actions/configure-aws-credentials@") for u in _uses(job))
        writes_token = job.get("permissions", {}).get("id-token") == "write"
        assert assumes == writes_token, name
        if assumes:
            assert job.get("environment"), f"{name} assumes an AWS role outside an environment"
            for step in _steps(job):
                if step.get("uses", "").startswith("aws-actions/configure-aws-credentials@"):
                    assert step["with"]["role-to-assume"] == "${{ vars.AWS_DEPLOY_ROLE_ARN }}"


def test_job_graph(workflow: dict[str, Any]) -> None:
    jobs = workflow["jobs"]

    def needs(name: str) -> set[str]:
        n = jobs[name].get("needs", [])
        return {n} if isinstance(n, str) else set(n)

    assert needs("test") == {"lint"}
    assert needs("build") == {"test"}
    assert needs("deploy-staging") == {"build"}
    assert needs("e2e-staging") == {"deploy-staging"}
    assert needs("production") == {"build", "e2e-staging"}
    assert "refs/heads/main" in jobs["build"]["if"]
    assert "pull_request" in jobs["build"]["if"]
    env = {n: j.get("environment") for n, j in jobs.items()}
    assert env["production"]["name"] == "production"
    for name in ("build", "e2e-staging", "rollback-staging"):
        assert env[name] == "staging", name
    assert env["deploy-staging"]["name"] == "staging"
    assert env["lint"] is None and env["test"] is None
    # the lint job runs the same checks as .ci/run
    runs = " ".join(s.get("run", "") for s in _steps(jobs["lint"]))
    assert "make lint" in runs and ".github/scripts/actionlint.sh" in runs
    assert "bash .ci/run" in " ".join(s.get("run", "") for s in _steps(jobs["test"]))


def test_both_images_are_built_once_and_promoted_by_digest(workflow: dict[str, Any]) -> None:
    jobs = workflow["jobs"]
    builds = [s for s in _steps(jobs["build"]) if s.get("uses", "").startswith("docker/build-")]
    files = {s["with"]["file"] for s in builds}
    assert files == {"infra/docker/Dockerfile.api", "infra/docker/Dockerfile.gpu-worker"}
    for f in files:
        assert (ROOT / f).is_file()
    for name, job in jobs.items():
        if name != "build":
            assert not any(u.startswith("docker/build-") for u in _uses(job)), name
    promote = next(s for s in _steps(jobs["production"]) if s.get("id") == "promote")
    assert "crane copy" in promote["run"]
    assert '"$have" != "$digest"' in promote["run"]  # fails unless the digest is the tested one
    assert jobs["production"]["env"]["APP_DIGEST"] == "${{ needs.build.outputs.app_digest }}"


def test_rollback_steps(workflow: dict[str, Any]) -> None:
    jobs = workflow["jobs"]
    for name in ("deploy-staging", "production"):
        last = _steps(jobs[name])[-1]
        assert "failure()" in last["if"], name
        assert "deploy.py rollback" in last["run"], name
    assert "failure()" in jobs["rollback-staging"]["if"]
    prod = [s.get("run", "") for s in _steps(jobs["production"])]
    health = next(i for i, r in enumerate(prod) if "--health-only" in r)
    rollout = max(i for i, r in enumerate(prod) if "deploy.py ecs" in r or "deploy.py gpu" in r)
    assert rollout < health < len(prod) - 1


def test_names_match_the_terraform(workflow: dict[str, Any], tf: Config) -> None:
    services = set(tf.locals("compute")["services"])
    assert set(workflow["env"]["ECS_SERVICES"].split()) == services
    repositories = tf.locals("compute")["repositories"]
    assert repositories == {
        "app": "${var.name}/pinksea",
        "gpu-worker": "${var.name}/gpu-worker",
    }
    text = WORKFLOW.read_text()
    assert "$NAME/pinksea" in text and "$NAME/gpu-worker" in text
    asg = tf.resource("aws_autoscaling_group", "gpu", "compute")
    assert asg.body["name"] == "${var.name}-gpu-${each.key}"
    assert '\'%s-gpu-%s \' "$NAME" "$t"' in text
    cluster = tf.resource("aws_ecs_cluster", "main", "compute")
    assert cluster.body["name"] == "${var.name}"
    lt = tf.resource("aws_autoscaling_group", "gpu", "compute").body["mixed_instances_policy"]
    spec = lt[0]["launch_template"][0]["launch_template_specification"][0]
    assert spec["version"] == "$Latest"  # deploy.py makes a new version the default and $Latest


def test_deploy_role_trusts_one_repository_environment() -> None:
    text = (TERRAFORM / "modules" / "identity" / "github.tf").read_text()
    assert "repo:${var.github_repository}:environment:${var.github_environment}" in text
    assert "token.actions.githubusercontent.com:aud" in text


# ----------------------------------------------------------------------------------------------
# Fake AWS clients, every request checked against botocore's model of the real API
# ----------------------------------------------------------------------------------------------

_botocore = botocore.session.get_session()


class Fake:
    service = ""

    def __init__(self) -> None:
        self._model = _botocore.get_service_model(self.service)
        self._ops = {botocore.xform_name(op): op for op in self._model.operation_names}
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattribute__(self, name: str) -> Any:
        attr = object.__getattribute__(self, name)
        ops = object.__getattribute__(self, "__dict__").get("_ops", {})
        if name in ops and callable(attr):

            def checked(**kwargs: Any) -> Any:
                op = self._model.operation_model(ops[name])
                validate_parameters(kwargs, op.input_shape)
                self.calls.append((name, kwargs))
                return attr(**kwargs)

            return checked
        return attr

    def called(self, name: str) -> list[dict[str, Any]]:
        return [kw for n, kw in self.calls if n == name]


def _client_error(code: str, op: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, op)


class FakeEcs(Fake):
    service = "ecs"

    def __init__(self, services: dict[str, dict[str, Any]], fail: set[str] = frozenset()) -> None:
        super().__init__()
        self.task_definitions: dict[str, dict[str, Any]] = {}
        self.services: dict[str, dict[str, Any]] = {}
        self.fail = set(fail)
        self.revisions = itertools.count(100)
        for name, td in services.items():
            arn = self._store(td)
            self.services[name] = {
                "serviceName": name,
                "taskDefinition": arn,
                "deployments": [self._deployment(arn, "PRIMARY", "COMPLETED")],
            }

    def _store(self, td: dict[str, Any]) -> str:
        rev = next(self.revisions)
        arn = f"arn:aws:ecs:ap-northeast-2:123456789012:task-definition/{td['family']}:{rev}"
        stored = copy.deepcopy(td)
        stored.update(taskDefinitionArn=arn, revision=rev, status="ACTIVE", registeredBy="x")
        self.task_definitions[arn] = stored
        return arn

    @staticmethod
    def _deployment(arn: str, status: str, state: str) -> dict[str, Any]:
        return {
            "id": f"ecs-svc/{abs(hash((arn, status, state)))}",
            "status": status,
            "taskDefinition": arn,
            "rolloutState": state,
            "desiredCount": 1,
            "runningCount": 1 if state == "COMPLETED" else 0,
        }

    def describe_services(self, cluster: str, services: list[str]) -> dict[str, Any]:
        out = []
        for name in services:
            s = self.services[name]
            out.append(copy.deepcopy(s))
            # one poll later the rollout has ended: completed, or rolled back
            primary = s["deployments"][0]
            if primary["rolloutState"] == "IN_PROGRESS":
                if name in self.fail and primary["taskDefinition"] != s["previous"]:
                    failed = dict(primary, status="ACTIVE", rolloutState="FAILED")
                    failed["rolloutStateReason"] = "tasks failed to start (circuit breaker)"
                    back = self._deployment(s["previous"], "PRIMARY", "COMPLETED")
                    s["deployments"] = [back, failed]
                    s["taskDefinition"] = s["previous"]
                else:
                    s["deployments"] = [
                        self._deployment(primary["taskDefinition"], "PRIMARY", "COMPLETED")
                    ]
        return {"services": out, "failures": []}

    def describe_task_definition(self, taskDefinition: str, include: list[str]) -> dict[str, Any]:
        return {
            "taskDefinition": copy.deepcopy(self.task_definitions[taskDefinition]),
            "tags": [{"key": "Project", "value": "pinksea"}],
        }

    def register_task_definition(self, **kwargs: Any) -> dict[str, Any]:
        kwargs.pop("tags", None)
        arn = self._store(kwargs)
        return {"taskDefinition": self.task_definitions[arn]}

    def update_service(self, cluster: str, service: str, taskDefinition: str) -> dict[str, Any]:
        s = self.services[service]
        s["previous"] = s["taskDefinition"]
        s["taskDefinition"] = taskDefinition
        s["deployments"] = [
            self._deployment(taskDefinition, "PRIMARY", "IN_PROGRESS"),
            *(dict(d, status="ACTIVE") for d in s["deployments"]),
        ]
        return {"service": copy.deepcopy(s)}


class FakeEc2(Fake):
    service = "ec2"

    def __init__(self, user_data: str) -> None:
        super().__init__()
        data = {
            "UserData": base64.b64encode(user_data.encode()).decode(),
            "InstanceType": "g4dn.xlarge",
        }
        self.versions: dict[int, dict[str, Any]] = {1: data}
        self.default = 1

    def describe_launch_template_versions(
        self, LaunchTemplateId: str, Versions: list[str]
    ) -> dict[str, Any]:
        n = max(self.versions) if Versions == ["$Latest"] else int(Versions[0])
        return {
            "LaunchTemplateVersions": [
                {
                    "LaunchTemplateId": LaunchTemplateId,
                    "VersionNumber": n,
                    "LaunchTemplateData": copy.deepcopy(self.versions[n]),
                }
            ]
        }

    def create_launch_template_version(self, **kwargs: Any) -> dict[str, Any]:
        data = copy.deepcopy(self.versions[int(kwargs["SourceVersion"])])
        data.update(kwargs["LaunchTemplateData"])
        n = max(self.versions) + 1
        self.versions[n] = data
        return {"LaunchTemplateVersion": {"VersionNumber": n}}

    def modify_launch_template(self, LaunchTemplateId: str, DefaultVersion: str) -> dict[str, Any]:
        self.default = int(DefaultVersion)
        return {}

    def image(self, version: int | None = None) -> str:
        data = self.versions[version or max(self.versions)]
        text = base64.b64decode(data["UserData"]).decode()
        return re.findall(re.escape(GPU_REPO) + r"\S+", text)[0]


class FakeAutoscaling(Fake):
    service = "autoscaling"

    def __init__(self, groups: list[str], outcome: str = "Successful") -> None:
        super().__init__()
        self.groups = groups
        self.outcome = outcome
        self.refreshes: dict[str, list[dict[str, Any]]] = {g: [] for g in groups}

    def describe_auto_scaling_groups(self, AutoScalingGroupNames: list[str]) -> dict[str, Any]:
        spec = {"LaunchTemplateId": "lt-0123456789abcdef0", "Version": "$Latest"}
        return {
            "AutoScalingGroups": [
                {
                    "AutoScalingGroupName": g,
                    "MixedInstancesPolicy": {
                        "LaunchTemplate": {"LaunchTemplateSpecification": spec}
                    },
                }
                for g in AutoScalingGroupNames
                if g in self.groups
            ]
        }

    def start_instance_refresh(self, **kwargs: Any) -> dict[str, Any]:
        rid = f"r-{len(self.refreshes[kwargs['AutoScalingGroupName']])}"
        self.refreshes[kwargs["AutoScalingGroupName"]].insert(
            0, {"InstanceRefreshId": rid, "Status": "InProgress", "polls": 0}
        )
        return {"InstanceRefreshId": rid}

    def describe_instance_refreshes(
        self, AutoScalingGroupName: str, **kwargs: Any
    ) -> dict[str, Any]:
        items = self.refreshes[AutoScalingGroupName]
        ids = kwargs.get("InstanceRefreshIds")
        if ids:
            items = [r for r in items if r["InstanceRefreshId"] in ids]
        out = [dict(r) for r in items[: kwargs.get("MaxRecords", 50)]]
        for r in items:
            r["polls"] += 1
            if r["Status"] == "InProgress" and r["polls"] >= 2:
                r["Status"] = self.outcome
            elif r["Status"] == "Cancelling":
                r["Status"] = "Cancelled"
        return {"InstanceRefreshes": [{k: v for k, v in r.items() if k != "polls"} for r in out]}

    def cancel_instance_refresh(self, AutoScalingGroupName: str) -> dict[str, Any]:
        for r in self.refreshes[AutoScalingGroupName]:
            if r["Status"] == "InProgress":
                r["Status"] = "Cancelling"
                return {"InstanceRefreshId": r["InstanceRefreshId"]}
        raise _client_error("ActiveInstanceRefreshNotFound", "CancelInstanceRefresh")


def _task_definition(family: str, sidecar: bool = False) -> dict[str, Any]:
    containers = [
        {"name": family, "image": f"{REPO}:old", "essential": True, "command": ["pinksea", family]}
    ]
    if sidecar:
        containers.append({"name": "lag-metric", "image": f"{REPO}:old", "essential": False})
        containers.append(
            {"name": "otel", "image": "public.ecr.aws/otel/collector:1", "essential": False}
        )
    return {
        "family": f"pinksea-staging-{family}",
        "taskRoleArn": f"arn:aws:iam::123456789012:role/pinksea-staging-{family}-task",
        "executionRoleArn": f"arn:aws:iam::123456789012:role/pinksea-staging-{family}-execution",
        "networkMode": "awsvpc",
        "containerDefinitions": containers,
        "volumes": [{"name": "tmp"}],
        "requiresCompatibilities": ["FARGATE"],
        "cpu": "512",
        "memory": "1024",
        "runtimePlatform": {"operatingSystemFamily": "LINUX", "cpuArchitecture": "X86_64"},
        "compatibilities": ["EC2", "FARGATE"],
        "requiresAttributes": [{"name": "com.amazonaws.ecs.capability.docker-remote-api.1.18"}],
        "registeredAt": "2026-01-01T00:00:00Z",
    }


SERVICES = ["api", "relay", "scheduler"]


def _ecs(fail: set[str] = frozenset()) -> FakeEcs:
    return FakeEcs({s: _task_definition(s, sidecar=s == "scheduler") for s in SERVICES}, fail)


def _user_data() -> str:
    """The real GPU user data template with the image filled in (the rest stays templated)."""
    template = (TERRAFORM / "modules" / "compute" / "gpu-user-data.sh.tftpl").read_text()
    assert template.count("${image}") == 1
    return template.replace("${image}", f"{GPU_REPO}:old").replace(
        "${registry}", GPU_REPO.split("/")[0]
    )


def no_sleep(_: float) -> None:
    pass


# ----------------------------------------------------------------------------------------------
# deploy.py
# ----------------------------------------------------------------------------------------------


def test_render_swaps_the_repositorys_images_only() -> None:
    td = _task_definition("scheduler", sidecar=True)
    td["taskDefinitionArn"] = "arn:...:1"
    td["revision"] = 1
    td["status"] = "ACTIVE"
    rendered = deploy.render_task_definition(td, REPO, f"{REPO}:new")
    images = [c["image"] for c in rendered["containerDefinitions"]]
    assert images == [f"{REPO}:new", f"{REPO}:new", "public.ecr.aws/otel/collector:1"]
    assert td["containerDefinitions"][0]["image"] == f"{REPO}:old"  # the input is untouched
    model = _botocore.get_service_model("ecs").operation_model("RegisterTaskDefinition")
    validate_parameters(rendered, model.input_shape)  # only what RegisterTaskDefinition takes
    with pytest.raises(deploy.RolloutError, match="no container runs an image of"):
        deploy.render_task_definition(td, GPU_REPO, f"{GPU_REPO}:new")


def test_swap_image_in_the_gpu_user_data() -> None:
    text = _user_data()
    swapped, count = deploy.swap_image(text, GPU_REPO, f"{GPU_REPO}:new")
    assert count == 1
    assert f"{GPU_REPO}:new pinksea gpu-worker --tier" in swapped
    digest = "sha256:" + "a" * 64
    again, count = deploy.swap_image(swapped, GPU_REPO, f"{GPU_REPO}@{digest}")
    assert count == 1 and f"{GPU_REPO}@{digest} pinksea" in again
    # the docker login line names the registry, not the repository: untouched
    assert again.count(GPU_REPO.split("/")[0]) == swapped.count(GPU_REPO.split("/")[0])


def test_deploy_ecs_rolls_every_service_onto_a_new_revision() -> None:
    ecs = _ecs()
    targets = deploy.deploy_ecs(
        ecs, "pinksea-staging", SERVICES, REPO, f"{REPO}:new", sleep=no_sleep, poll=0
    )
    assert set(targets) == set(SERVICES)
    for name in SERVICES:
        service = ecs.services[name]
        assert service["taskDefinition"] == targets[name]
        images = {
            c["image"]
            for c in ecs.task_definitions[targets[name]]["containerDefinitions"]
            if "otel" not in c["image"]
        }
        assert images == {f"{REPO}:new"}
    registered = ecs.called("register_task_definition")
    assert all(r["tags"] == [{"key": "Project", "value": "pinksea"}] for r in registered)


def test_deploy_ecs_fails_when_the_circuit_breaker_rolls_back() -> None:
    ecs = _ecs(fail={"relay"})
    with pytest.raises(deploy.RolloutError, match="relay: tasks failed to start"):
        deploy.deploy_ecs(
            ecs, "pinksea-staging", SERVICES, REPO, f"{REPO}:new", sleep=no_sleep, poll=0
        )
    assert ecs.services["api"]["taskDefinition"] != ecs.services["api"]["previous"]


def test_wait_gives_up_after_its_timeout() -> None:
    ecs = _ecs()
    ecs.update_service(
        cluster="c", service="api", taskDefinition=ecs.services["api"]["taskDefinition"]
    )
    ecs.services["api"]["deployments"][0]["desiredCount"] = 5  # never reaches its count
    ecs.services["api"]["deployments"][0]["rolloutState"] = "COMPLETED"
    ecs.services["api"]["deployments"] = ecs.services["api"]["deployments"][:1]
    clock = itertools.count(0, 100)
    with pytest.raises(deploy.RolloutError, match="still rolling out"):
        deploy.wait_for_services(
            ecs,
            "c",
            {"api": ecs.services["api"]["taskDefinition"]},
            timeout=250,
            poll=0,
            clock=lambda: float(next(clock)),
            sleep=no_sleep,
        )


def test_deploy_gpu_new_version_default_and_instance_refresh() -> None:
    ec2, asg = FakeEc2(_user_data()), FakeAutoscaling(["pinksea-staging-gpu-basic"])
    deploy.deploy_gpu(
        ec2, asg, ["pinksea-staging-gpu-basic"], GPU_REPO, f"{GPU_REPO}:new", sleep=no_sleep, poll=0
    )
    assert ec2.image() == f"{GPU_REPO}:new" and ec2.image(1) == f"{GPU_REPO}:old"
    assert ec2.default == max(ec2.versions) == 2
    (start,) = asg.called("start_instance_refresh")
    assert start["Preferences"]["MinHealthyPercentage"] == 100  # launch before terminating
    assert start["Preferences"]["MaxHealthyPercentage"] == 200


def test_deploy_gpu_fails_with_the_refresh() -> None:
    ec2, asg = FakeEc2(_user_data()), FakeAutoscaling(["g"], outcome="Failed")
    with pytest.raises(deploy.RolloutError, match="g: Failed"):
        deploy.deploy_gpu(ec2, asg, ["g"], GPU_REPO, f"{GPU_REPO}:new", sleep=no_sleep, poll=0)


def test_rollback_restores_the_snapshot() -> None:
    ecs, ec2, asg = _ecs(), FakeEc2(_user_data()), FakeAutoscaling(["g"])
    snap = deploy.snapshot(ecs, ec2, asg, "pinksea-staging", SERVICES, ["g"])
    assert snap["gpu"] == {"g": {"launch_template_id": "lt-0123456789abcdef0", "version": 1}}
    before = dict(snap["services"])
    deploy.deploy_ecs(ecs, "pinksea-staging", SERVICES, REPO, f"{REPO}:new", sleep=no_sleep, poll=0)
    deploy.deploy_gpu(ec2, asg, ["g"], GPU_REPO, f"{GPU_REPO}:new", sleep=no_sleep, poll=0)
    # a refresh still running when the health check failed is cancelled first
    asg.start_instance_refresh(AutoScalingGroupName="g", Strategy="Rolling")
    deploy.rollback(ecs, ec2, asg, json.loads(json.dumps(snap)), sleep=no_sleep, poll=0)
    assert {n: s["taskDefinition"] for n, s in ecs.services.items()} == before
    assert asg.called("cancel_instance_refresh")
    assert ec2.image() == f"{GPU_REPO}:old" and ec2.default == max(ec2.versions) == 3
    assert len(asg.called("start_instance_refresh")) == 3


def test_rollback_waits_for_a_circuit_breaker_rollback_in_progress() -> None:
    ecs = _ecs(fail={"api"})
    snap = deploy.snapshot(ecs, None, None, "pinksea-staging", SERVICES, [])
    with pytest.raises(deploy.RolloutError):
        deploy.deploy_ecs(
            ecs, "pinksea-staging", SERVICES, REPO, f"{REPO}:new", sleep=no_sleep, poll=0
        )
    deploy.rollback(ecs, None, None, snap, sleep=no_sleep, poll=0)
    assert {n: s["taskDefinition"] for n, s in ecs.services.items()} == snap["services"]


def test_deploy_cli_refuses_an_image_of_another_repository(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        deploy.main(
            [
                "--region",
                "ap-northeast-2",
                "ecs",
                "--cluster",
                "c",
                "--services",
                "api",
                "--repository",
                REPO,
                "--image",
                f"{GPU_REPO}:x",
            ]
        )
    assert "is not an image of" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# smoke.py against a local server that answers like the API
# ----------------------------------------------------------------------------------------------


class FakeApi(BaseHTTPRequestHandler):
    state: dict[str, Any] = {}

    def log_message(self, *args: Any) -> None:
        pass

    def _send(
        self,
        status: int,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> None:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        s = self.state
        s.setdefault("seen", []).append(self.path)
        if self.path == "/api/healthz":
            return self._send(200, {"status": "ok"})
        if self.path == "/api/readyz":
            s["ready_polls"] = s.get("ready_polls", 0) + 1
            return self._send(200 if s["ready_polls"] > 1 else 503, {})
        if self.path == "/image.png":
            return self._send(200, raw=smoke.PNG + b"rest", headers={"Content-Type": "image/png"})
        if self.headers.get("Authorization") != "Bearer t0ken":
            return self._send(401, {"title": "unauthorized"})
        if self.path == "/api/v1/me":
            return self._send(200, {"user_id": "u1", "plan": {"slug": "tester"}})
        if self.path.startswith("/api/v1/jobs/"):
            assert self.headers.get("X-Min-Position") == "42"
            s["job_polls"] = s.get("job_polls", 0) + 1
            if s["job_polls"] == 1:
                return self._send(503, {}, headers={"Retry-After": "0"})
            status = "running" if s["job_polls"] == 2 else s["final"]
            return self._send(
                200,
                {
                    "job_id": "j1",
                    "status": status,
                    "gpu_ms": 1234,
                    "charged_credits": "1.234",
                    "images": [{"href": "/v1/images/j1-0"}] if status == "completed" else [],
                    "failure_reason": "oom" if status == "failed" else None,
                },
            )
        if self.path == "/api/v1/images/j1-0":
            port = self.server.server_address[1]
            return self._send(200, {"name": "j1-0", "url": f"http://127.0.0.1:{port}/image.png"})
        return self._send(404, {})

    def do_POST(self) -> None:
        assert self.path == "/api/v1/jobs"
        assert self.headers.get("Idempotency-Key")
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.state["submitted"] = body
        self._send(202, {"job_id": "j1", "status": "accepted", "position": 42, "hold_credits": "2"})


@pytest.fixture
def api_server() -> Iterator[str]:
    FakeApi.state = {"final": "completed"}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()


def test_smoke_health_sign_in_and_a_job(api_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2E_TOKEN", "t0ken")
    monkeypatch.setattr(smoke.time, "sleep", no_sleep)
    assert smoke.main(["--base-url", api_server, "--model", "tiny-sd"]) == 0
    assert FakeApi.state["submitted"]["model"] == "tiny-sd"
    assert "/image.png" in FakeApi.state["seen"]


def test_smoke_fails_on_a_failed_job(
    api_server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    FakeApi.state["final"] = "failed"
    monkeypatch.setenv("E2E_TOKEN", "t0ken")
    monkeypatch.setattr(smoke.time, "sleep", no_sleep)
    assert smoke.main(["--base-url", api_server]) == 1
    assert "job j1 failed: oom" in capsys.readouterr().out


def test_smoke_needs_credentials_without_a_token(
    api_server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("E2E_TOKEN", "E2E_USERNAME", "E2E_PASSWORD", "E2E_USER_POOL_ID", "E2E_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(smoke.time, "sleep", no_sleep)
    assert smoke.main(["--base-url", api_server]) == 1
    assert (
        "sign-in needs --user-pool-id, --client-id, E2E_USERNAME, E2E_PASSWORD"
        in capsys.readouterr().out
    )


def test_smoke_health_only(api_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smoke.time, "sleep", no_sleep)
    assert smoke.main(["--base-url", api_server, "--health-only", "--duration", "0"]) == 0
    assert not any("/v1/" in p for p in FakeApi.state["seen"])
    dead = "http://127.0.0.1:9/api"  # nothing listens on the discard port
    assert smoke.main(["--base-url", dead, "--health-only", "--ready-timeout", "0"]) == 1
