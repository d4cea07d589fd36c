"""The release pipeline (.github/workflows/release.yml) and its deploy script.

- the workflow's shape: least-privilege permissions, OIDC only, pinned actions, the job graph
  (lint -> test -> build -> staging -> E2E -> approval -> production), rollback steps, and the
  names it derives (cluster, repositories, services, GPU groups) against the Terraform (no
  services needed);
- .github/scripts/deploy.py on real boto3 clients against the local AWS, moto's server of the
  local stack (infra/local/aws.sh: every moto service on one port): a cluster, services, task
  definitions, launch templates with the GPU user data and auto-scaling groups made as
  modules/compute names them, then the rollout, the snapshot and the rollback, checked against
  what moto reports afterwards. Two parts of AWS that moto does not have are stood in for on
  those clients' event hooks, each said so where it is defined: ECS's deployment controller
  (moto never starts, completes or fails a deployment) and Auto Scaling's instance refreshes
  (moto has none of those three operations).

.github/scripts/smoke.py runs against the real API in tests/e2e/test_smoke_script.py.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import itertools
import json
import re
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import botocore.session
import pytest
import yaml
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from botocore.validate import validate_parameters

from infra.settings import Settings
from tests.conftest import LOCAL_AWS_URL, reachable
from tests.infra.hcl_config import TERRAFORM, Config, load_config, load_tfvars

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
# The local AWS: moto's server, through real boto3 clients
# ----------------------------------------------------------------------------------------------

_botocore = botocore.session.get_session()


@pytest.fixture(scope="module")
def aws() -> dict[str, Any]:
    """boto3 client arguments for the local stack's moto server (infra/local/aws.sh: one moto
    server answers every AWS service on its port; moto takes any credentials)."""
    s = Settings()
    kwargs = {
        "endpoint_url": LOCAL_AWS_URL,
        "region_name": s.s3_region,
        "aws_access_key_id": s.s3_access_key_id,
        "aws_secret_access_key": s.s3_secret_access_key.get_secret_value(),
    }
    with reachable("the local AWS (moto server, infra/local/aws.sh)", LOCAL_AWS_URL):
        boto3.client("ecs", **kwargs).list_clusters()
    return kwargs


def _event(client: Any, when: str, operation: str) -> str:
    return f"{when}.{client.meta.service_model.service_id.hyphenize()}.{operation}"


class EcsDeploymentController:
    """Stand-in for ECS's deployment controller and its circuit breaker, which moto lacks.

    moto keeps a service's `deployments` as CreateService made them: UpdateService changes the
    service's taskDefinition but starts no deployment, and no deployment ever completes or
    fails (moto's state manager, /moto-api/state-manager, drives ECS tasks only; moto's
    MOTO_ECS_SERVICE_RUNNING only sets the counts of new services). On a real boto3 ECS
    client talking to moto, this keeps what the controller would and puts it in the
    `deployments` of moto's CreateService, UpdateService and DescribeServices answers (the
    rest of every answer is moto's): a steady PRIMARY deployment per CreateService; per
    UpdateService a new PRIMARY one, IN_PROGRESS for one DescribeServices answer, then
    COMPLETED, or, for a service in `failing`, FAILED by the circuit breaker, which rolls the
    service back in moto (UpdateService onto the revision it ran before) with a PRIMARY
    deployment that stays IN_PROGRESS for `rollback_polls` answers."""

    def __init__(self, ecs: Any, failing: Iterable[str] = (), rollback_polls: int = 1) -> None:
        self.ecs = ecs
        self.failing = set(failing)
        self.rollback_polls = rollback_polls
        self.deployments: dict[str, list[dict[str, Any]]] = {}
        self.updates: dict[str, int] = {}  # UpdateService calls per service, not the breaker's
        self._ids = itertools.count(1)
        self._breaker_rolling_back = False
        for operation in ("CreateService", "UpdateService"):
            ecs.meta.events.register(_event(ecs, "after-call", operation), self._started)
        ecs.meta.events.register(_event(ecs, "after-call", "DescribeServices"), self._described)

    def _started(self, parsed: dict[str, Any], event_name: str, **_: Any) -> None:
        service = parsed.get("service")
        if not service:
            return  # an error answer
        name, created = service["serviceName"], event_name.endswith(".CreateService")
        rollback = self._breaker_rolling_back
        if not created and not rollback:
            self.updates[name] = self.updates.get(name, 0) + 1
        older = self.deployments.get(name, [])
        previous = older[0]["taskDefinition"] if older else None
        for d in older:
            d["status"] = "ACTIVE"
        deployment = {
            "id": f"ecs-svc/{next(self._ids)}",
            "status": "PRIMARY",
            "taskDefinition": service["taskDefinition"],
            "desiredCount": service["desiredCount"],
            "runningCount": service["desiredCount"] if created else 0,
            "rolloutState": "COMPLETED" if created else "IN_PROGRESS",
            "_cluster": service["clusterArn"],
            "_previous": previous,
            "_fails": not created and not rollback and name in self.failing,
            "_polls": self.rollback_polls if rollback else 1,
        }
        self.deployments[name] = [deployment, *older]
        service["deployments"] = self.public(name)

    def public(self, name: str) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in d.items() if not k.startswith("_")} for d in self.deployments[name]
        ]

    def _described(self, parsed: dict[str, Any], **_: Any) -> None:
        names = [s["serviceName"] for s in parsed.get("services", [])]
        for service in parsed.get("services", []):
            if service["serviceName"] in self.deployments:
                service["deployments"] = self.public(service["serviceName"])
        for name in names:  # answered: the rollouts move on
            self._advance(name)

    def _advance(self, name: str) -> None:
        primary = (self.deployments.get(name) or [{}])[0]
        if primary.get("rolloutState") != "IN_PROGRESS":
            return
        primary["_polls"] -= 1
        if primary["_polls"] > 0:
            return
        if primary["_fails"]:
            primary.update(
                status="ACTIVE",
                rolloutState="FAILED",
                rolloutStateReason="tasks failed to start (deployment circuit breaker)",
            )
            self._breaker_rolling_back = True
            try:
                self.ecs.update_service(
                    cluster=primary["_cluster"], service=name, taskDefinition=primary["_previous"]
                )
            finally:
                self._breaker_rolling_back = False
            return
        primary.update(rolloutState="COMPLETED", runningCount=primary["desiredCount"])
        self.deployments[name] = [primary]  # the older deployments drained


class InstanceRefreshes:
    """Stand-in for Auto Scaling's instance refreshes, which moto lacks: StartInstanceRefresh,
    DescribeInstanceRefreshes and CancelInstanceRefresh answer 500 on moto's server, and no
    moto API drives them. On a real boto3 Auto Scaling client talking to moto, botocore
    builds and validates these three requests against the real API's model as ever; this
    answers them in moto's place, for groups moto has (everything else goes to moto). A
    refresh stays InProgress for `polls` DescribeInstanceRefreshes answers, then ends in
    `outcome`; a cancelled one answers Cancelling once, then Cancelled."""

    OPERATIONS = ("StartInstanceRefresh", "DescribeInstanceRefreshes", "CancelInstanceRefresh")
    ACTIVE = ("Pending", "InProgress", "Cancelling")

    def __init__(self, autoscaling: Any, outcome: str = "Successful", polls: int = 2) -> None:
        self.autoscaling = autoscaling
        self.outcome = outcome
        self.polls = polls
        self.refreshes: dict[str, list[dict[str, Any]]] = {}  # per group, newest first
        self._ids = itertools.count(1)
        events = autoscaling.meta.events
        for op in self.OPERATIONS:
            events.register(_event(autoscaling, "before-parameter-build", op), self._keep)
            events.register(_event(autoscaling, "before-call", op), self._answer)

    @staticmethod
    def _keep(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["instance_refresh_request"] = dict(params)

    @staticmethod
    def _reply(status: int, body: dict[str, Any]) -> tuple[AWSResponse, dict[str, Any]]:
        body["ResponseMetadata"] = {"HTTPStatusCode": status, "HTTPHeaders": {}}
        return AWSResponse("http://instance-refreshes.stand-in/", status, {}, None), body

    def _error(self, code: str, message: str) -> tuple[AWSResponse, dict[str, Any]]:
        return self._reply(400, {"Error": {"Code": code, "Message": message, "Type": "Sender"}})

    def _answer(
        self, model: Any, context: dict[str, Any], **_: Any
    ) -> tuple[AWSResponse, dict[str, Any]]:
        request = context["instance_refresh_request"]
        group = request["AutoScalingGroupName"]
        found = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group])
        if not found["AutoScalingGroups"]:
            return self._error("ValidationError", f"AutoScalingGroup name not found - {group}")
        items = self.refreshes.setdefault(group, [])
        active = next((r for r in items if r["Status"] in self.ACTIVE), None)
        if model.name == "StartInstanceRefresh":
            if active:
                return self._error("InstanceRefreshInProgress", f"{group} is being refreshed")
            refresh = {
                "InstanceRefreshId": f"00000000-0000-4000-8000-{next(self._ids):012d}",
                "AutoScalingGroupName": group,
                "Status": "InProgress",
                "PercentageComplete": 0,
                "Strategy": request.get("Strategy", "Rolling"),
                "Preferences": request.get("Preferences", {}),
                "_polls": self.polls,
            }
            items.insert(0, refresh)
            return self._reply(200, {"InstanceRefreshId": refresh["InstanceRefreshId"]})
        if model.name == "CancelInstanceRefresh":
            if not active or active["Status"] == "Cancelling":
                return self._error("ActiveInstanceRefresh.NotFound", f"{group}: none active")
            active["Status"] = "Cancelling"
            return self._reply(200, {"InstanceRefreshId": active["InstanceRefreshId"]})
        ids = request.get("InstanceRefreshIds")
        chosen = [r for r in items if not ids or r["InstanceRefreshId"] in ids]
        chosen = chosen[: request.get("MaxRecords", 50)]
        answer = [{k: v for k, v in r.items() if not k.startswith("_")} for r in chosen]
        for r in items:  # answered: the refreshes move on
            if r["Status"] == "Cancelling":
                r["Status"] = "Cancelled"
            elif r["Status"] == "InProgress":
                r["_polls"] -= 1
                if r["_polls"] <= 0:
                    r["Status"] = self.outcome
                    r["PercentageComplete"] = 100 if self.outcome == "Successful" else 50
                    if self.outcome != "Successful":
                        r["StatusReason"] = "instances failed to launch"
        return self._reply(200, {"InstanceRefreshes": answer})


# ----------------------------------------------------------------------------------------------
# An environment as modules/compute makes it, on the local AWS
# ----------------------------------------------------------------------------------------------


def _tf_name(template: str, name: str, key: str = "") -> str:
    return template.replace("${var.name}", name).replace("${each.key}", key)


def _user_data(gpu_repository: str = GPU_REPO, tag: str = "old") -> str:
    """The real GPU user data template with the image filled in (the rest stays templated)."""
    template = (TERRAFORM / "modules" / "compute" / "gpu-user-data.sh.tftpl").read_text()
    assert template.count("${image}") == 1
    return template.replace("${image}", f"{gpu_repository}:{tag}").replace(
        "${registry}", gpu_repository.split("/")[0]
    )


def _image_in(user_data_b64: str, repository: str) -> str:
    text = base64.b64decode(user_data_b64).decode()
    (image,) = re.findall(re.escape(repository) + r"[:@]\S+", text)
    return image


@dataclass
class Stage:
    """One environment (var.name) of modules/compute on moto: its ECR repositories, ECS cluster,
    services and task definitions, GPU launch templates and auto-scaling groups."""

    name: str
    cluster: str
    ecs: Any
    ec2: Any
    autoscaling: Any
    controller: EcsDeploymentController
    refreshes: InstanceRefreshes
    repository: str
    gpu_repository: str
    services: list[str]
    groups: list[str]
    templates: dict[str, str] = field(default_factory=dict)  # group -> launch template id
    initial: dict[str, str] = field(default_factory=dict)  # service -> task definition ARN

    def running(self) -> dict[str, str]:
        """The task definition moto says each service runs."""
        found = deploy.describe_services(self.ecs, self.cluster, self.services)
        return {n: s["taskDefinition"] for n, s in found.items()}

    def task_definition(self, arn: str) -> dict[str, Any]:
        resp = self.ecs.describe_task_definition(taskDefinition=arn, include=["TAGS"])
        return {**resp["taskDefinition"], "tags": resp.get("tags", [])}

    def images(self, arn: str) -> dict[str, str]:
        return {c["name"]: c["image"] for c in self.task_definition(arn)["containerDefinitions"]}

    def template(self, group: str, version: str = "$Default") -> dict[str, Any]:
        resp = self.ec2.describe_launch_template_versions(
            LaunchTemplateId=self.templates[group], Versions=[version]
        )
        return dict(resp["LaunchTemplateVersions"][0])

    def gpu_image(self, group: str, version: str = "$Default") -> str:
        data = self.template(group, version)["LaunchTemplateData"]
        return _image_in(data["UserData"], self.gpu_repository)


@pytest.fixture
def stage(aws: dict[str, Any], tf: Config) -> Iterator[Callable[..., Stage]]:
    """Makes a Stage (a unique var.name per call) and deletes it afterwards."""
    made: list[tuple[Stage, Any, list[str]]] = []
    staging = load_tfvars()["staging"]
    compute = tf.locals("compute")
    tiers = {k: t for k, t in staging["gpu_tiers"].items() if t["enabled"]}
    family = tf.resource("aws_ecs_task_definition", "service", "compute").body["family"]
    cluster_name = tf.resource("aws_ecs_cluster", "main", "compute").body["name"]
    asg_name = tf.resource("aws_autoscaling_group", "gpu", "compute").body["name"]
    lt = tf.resource("aws_launch_template", "gpu", "compute").body
    (ami_parameter,) = [
        body["gpu_ami"]["name"]
        for kind, body, _ in tf.blocks("data", "compute")
        if kind == "aws_ssm_parameter"
    ]

    def make(
        failing: Iterable[str] = (),
        rollback_polls: int = 1,
        refresh_outcome: str = "Successful",
    ) -> Stage:
        name = f"pinksea-t{uuid.uuid4().hex[:8]}"
        ecs = boto3.client("ecs", **aws)
        ec2 = boto3.client("ec2", **aws)
        autoscaling = boto3.client("autoscaling", **aws)
        ecr = boto3.client("ecr", **aws)
        uris = {
            key: ecr.create_repository(repositoryName=_tf_name(repo, name))["repository"][
                "repositoryUri"
            ]
            for key, repo in compute["repositories"].items()
        }
        s = Stage(
            name=name,
            cluster=_tf_name(cluster_name, name),
            ecs=ecs,
            ec2=ec2,
            autoscaling=autoscaling,
            controller=EcsDeploymentController(ecs, failing, rollback_polls),
            refreshes=InstanceRefreshes(autoscaling, refresh_outcome),
            repository=uris["app"],
            gpu_repository=uris["gpu-worker"],
            services=list(compute["services"]),
            groups=[_tf_name(asg_name, name, tier) for tier in tiers],
        )
        made.append((s, ecr, list(compute["repositories"].values())))
        subnets = [
            n["SubnetId"]
            for n in ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])[
                "Subnets"
            ]
        ][:2]
        group_id = ec2.create_security_group(GroupName=f"{name}-tasks", Description=name)["GroupId"]

        ecs.create_cluster(clusterName=s.cluster)
        old = f"{s.repository}:old"
        for key, svc in compute["services"].items():
            container = {
                "name": key,
                "image": old,
                "command": svc["command"],
                "essential": True,
                "readonlyRootFilesystem": True,
                "user": "10001:10001",
                "environment": [{"name": "PINKSEA_LOG_JSON", "value": "true"}],
                "mountPoints": [{"sourceVolume": "tmp", "containerPath": "/tmp"}],
            }
            containers = [container]
            if key == "scheduler":
                sidecar = compute["lag_metric_sidecar"]
                containers.append({"name": sidecar["name"], "image": old, "essential": False})
            td = ecs.register_task_definition(
                family=_tf_name(family, name, key),
                requiresCompatibilities=["FARGATE"],
                networkMode="awsvpc",
                cpu="512",
                memory="1024",
                executionRoleArn=f"arn:aws:iam::123456789012:role/{name}-{key}-execution",
                taskRoleArn=f"arn:aws:iam::123456789012:role/{name}-{key}-task",
                runtimePlatform={"operatingSystemFamily": "LINUX", "cpuArchitecture": "X86_64"},
                volumes=[{"name": "tmp"}],
                containerDefinitions=containers,
                tags=[{"key": "Project", "value": "pinksea"}],
            )["taskDefinition"]
            s.initial[key] = td["taskDefinitionArn"]
            ecs.create_service(
                cluster=s.cluster,
                serviceName=key,
                taskDefinition=td["taskDefinitionArn"],
                desiredCount=staging["api_min_count"] if key == "api" else 1,
                launchType="FARGATE",
                platformVersion="LATEST",
                propagateTags="SERVICE",
                enableExecuteCommand=True,
                deploymentConfiguration={
                    "deploymentCircuitBreaker": {"enable": True, "rollback": True},
                    "minimumHealthyPercent": 100 if key == "api" else 0,
                    "maximumPercent": 200 if key == "api" else 100,
                },
                networkConfiguration={
                    "awsvpcConfiguration": {
                        "subnets": subnets,
                        "securityGroups": [group_id],
                        "assignPublicIp": "DISABLED",
                    }
                },
            )

        ami = boto3.client("ssm", **aws).get_parameter(Name=ami_parameter)["Parameter"]["Value"]
        for tier, group in zip(tiers, s.groups, strict=True):
            t = tiers[tier]
            template = ec2.create_launch_template(
                LaunchTemplateName=_tf_name(lt["name_prefix"], name, tier) + uuid.uuid4().hex,
                LaunchTemplateData={
                    "ImageId": ami,
                    "InstanceType": t["instance_type"],
                    "EbsOptimized": True,
                    "MetadataOptions": {
                        "HttpEndpoint": "enabled",
                        "HttpTokens": "required",
                        "HttpPutResponseHopLimit": 1,
                    },
                    "Monitoring": {"Enabled": True},
                    "UserData": base64.b64encode(_user_data(s.gpu_repository).encode()).decode(),
                },
            )["LaunchTemplate"]
            s.templates[group] = template["LaunchTemplateId"]
            autoscaling.create_auto_scaling_group(
                AutoScalingGroupName=group,
                MinSize=t["min_size"],
                MaxSize=t["max_size"],
                VPCZoneIdentifier=",".join(subnets),
                HealthCheckType="EC2",
                HealthCheckGracePeriod=300,
                DefaultInstanceWarmup=300,
                CapacityRebalance=t["spot"],
                MixedInstancesPolicy={
                    "InstancesDistribution": {
                        "OnDemandBaseCapacity": 1 if t["spot"] else 0,
                        "OnDemandPercentageAboveBaseCapacity": 0 if t["spot"] else 100,
                        "SpotAllocationStrategy": "price-capacity-optimized",
                    },
                    "LaunchTemplate": {
                        "LaunchTemplateSpecification": {
                            "LaunchTemplateId": template["LaunchTemplateId"],
                            "Version": "$Latest",
                        }
                    },
                },
            )
        return s

    yield make

    for s, ecr, repositories in made:
        for group in s.groups:
            _quietly(
                s.autoscaling.delete_auto_scaling_group,
                AutoScalingGroupName=group,
                ForceDelete=True,
            )
        for template_id in s.templates.values():
            _quietly(s.ec2.delete_launch_template, LaunchTemplateId=template_id)
        for service in s.services:
            _quietly(s.ecs.delete_service, cluster=s.cluster, service=service, force=True)
        _quietly(s.ecs.delete_cluster, cluster=s.cluster)
        _quietly(s.ec2.delete_security_group, GroupName=f"{s.name}-tasks")
        for repo in repositories:
            _quietly(ecr.delete_repository, repositoryName=_tf_name(repo, s.name), force=True)


def _quietly(call: Callable[..., Any], **kwargs: Any) -> None:
    with contextlib.suppress(ClientError):
        call(**kwargs)


def no_sleep(_: float) -> None:
    pass


# ----------------------------------------------------------------------------------------------
# deploy.py
# ----------------------------------------------------------------------------------------------


def _task_definition(family: str, sidecar: bool = False) -> dict[str, Any]:
    """A task definition as DescribeTaskDefinition answers it."""
    containers = [
        {"name": family, "image": f"{REPO}:old", "essential": True, "command": ["pinksea", family]}
    ]
    if sidecar:
        containers.append({"name": "lag-metric", "image": f"{REPO}:old", "essential": False})
        containers.append(
            {"name": "otel", "image": "public.ecr.aws/otel/collector:1", "essential": False}
        )
    return {
        "taskDefinitionArn": f"arn:aws:ecs:ap-northeast-2:123456789012:task-definition/{family}:1",
        "revision": 1,
        "status": "ACTIVE",
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


def test_render_swaps_the_repositorys_images_only() -> None:
    td = _task_definition("scheduler", sidecar=True)
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


on_moto = pytest.mark.integration  # needs the local AWS


@on_moto
def test_deploy_ecs_rolls_every_service_onto_a_new_revision(stage: Callable[..., Stage]) -> None:
    s = stage()
    new = f"{s.repository}:new"
    targets = deploy.deploy_ecs(
        s.ecs, s.cluster, s.services, s.repository, new, sleep=no_sleep, poll=0
    )
    assert set(targets) == set(s.services)
    assert s.running() == targets  # what moto says every service runs now
    for name in s.services:
        before, after = s.task_definition(s.initial[name]), s.task_definition(targets[name])
        assert after["family"] == before["family"] and after["revision"] == before["revision"] + 1
        assert set(s.images(targets[name]).values()) == {new}
        assert set(s.images(s.initial[name]).values()) == {f"{s.repository}:old"}
        assert after["tags"] == [{"key": "Project", "value": "pinksea"}]
        for key in ("cpu", "memory", "networkMode", "taskRoleArn", "executionRoleArn", "volumes"):
            assert after[key] == before[key], key
        # everything but the image as it was (moto keeps what was registered)
        assert [{**c, "image": "-"} for c in after["containerDefinitions"]] == [
            {**c, "image": "-"} for c in before["containerDefinitions"]
        ]
        assert s.controller.public(name)[0]["rolloutState"] == "COMPLETED"
    assert list(s.images(targets["scheduler"])) == ["scheduler", "lag-metric"]


@on_moto
def test_deploy_ecs_fails_when_the_circuit_breaker_rolls_back(
    stage: Callable[..., Stage],
) -> None:
    s = stage(failing={"relay"})
    with pytest.raises(deploy.RolloutError, match="relay: tasks failed to start") as failed:
        deploy.deploy_ecs(
            s.ecs,
            s.cluster,
            s.services,
            s.repository,
            f"{s.repository}:new",
            sleep=no_sleep,
            poll=0,
        )
    assert "api" not in str(failed.value)
    running = s.running()
    assert running["relay"] == s.initial["relay"]  # the circuit breaker put it back
    assert all(running[n] != s.initial[n] for n in s.services if n != "relay")


@on_moto
def test_wait_gives_up_after_its_timeout(aws: dict[str, Any]) -> None:
    # moto's own deployment of a new service never completes (its tasks never run): no stand-in
    ecs = boto3.client("ecs", **aws)
    cluster = f"pinksea-t{uuid.uuid4().hex[:8]}"
    ecs.create_cluster(clusterName=cluster)
    try:
        td = ecs.register_task_definition(
            family=f"{cluster}-api",
            containerDefinitions=[{"name": "api", "image": f"{REPO}:old", "memory": 512}],
        )["taskDefinition"]["taskDefinitionArn"]
        ecs.create_service(cluster=cluster, serviceName="api", taskDefinition=td, desiredCount=2)
        (deployment,) = ecs.describe_services(cluster=cluster, services=["api"])["services"][0][
            "deployments"
        ]
        assert deployment["rolloutState"] == "IN_PROGRESS", (
            "moto was started with MOTO_ECS_SERVICE_RUNNING"
        )
        clock = itertools.count(0, 100)
        with pytest.raises(deploy.RolloutError, match="still rolling out"):
            deploy.wait_for_services(
                ecs,
                cluster,
                {"api": td},
                timeout=250,
                poll=0,
                clock=lambda: float(next(clock)),
                sleep=no_sleep,
            )
    finally:
        ecs.delete_service(cluster=cluster, service="api", force=True)
        ecs.delete_cluster(cluster=cluster)


@on_moto
def test_deploy_gpu_new_version_default_and_instance_refresh(stage: Callable[..., Stage]) -> None:
    s = stage()
    new = f"{s.gpu_repository}:new"
    refreshes = deploy.deploy_gpu(
        s.ec2, s.autoscaling, s.groups, s.gpu_repository, new, sleep=no_sleep, poll=0
    )
    assert set(refreshes) == set(s.groups)
    for group in s.groups:
        latest = s.template(group, "$Latest")
        assert latest["VersionNumber"] == 2 and latest["DefaultVersion"] is True
        assert s.gpu_image(group) == new and s.gpu_image(group, "1") == f"{s.gpu_repository}:old"
        assert latest["VersionDescription"] == "release gpu-worker:new"
        resp = s.autoscaling.describe_instance_refreshes(AutoScalingGroupName=group)
        (refresh,) = resp["InstanceRefreshes"]
        assert refresh["InstanceRefreshId"] == refreshes[group]
        assert refresh["Status"] == "Successful" and refresh["Strategy"] == "Rolling"
        assert refresh["Preferences"] == {
            "MinHealthyPercentage": 100,  # launch before terminating
            "MaxHealthyPercentage": 200,
            "SkipMatching": False,
        }
    # the same image again: no new version, the groups refreshed all the same
    deploy.deploy_gpu(s.ec2, s.autoscaling, s.groups, s.gpu_repository, new, sleep=no_sleep, poll=0)
    assert all(s.template(g, "$Latest")["VersionNumber"] == 2 for g in s.groups)


@on_moto
def test_deploy_gpu_fails_with_the_refresh(stage: Callable[..., Stage]) -> None:
    s = stage(refresh_outcome="Failed")
    group = s.groups[0]
    with pytest.raises(deploy.RolloutError, match=f"{group}: Failed: instances failed to launch"):
        deploy.deploy_gpu(
            s.ec2,
            s.autoscaling,
            [group],
            s.gpu_repository,
            f"{s.gpu_repository}:new",
            sleep=no_sleep,
            poll=0,
        )


@on_moto
def test_deploy_refuses_groups_and_services_that_do_not_exist(stage: Callable[..., Stage]) -> None:
    s = stage()
    with pytest.raises(deploy.RolloutError, match="services not found"):
        deploy.snapshot(s.ecs, None, None, s.cluster, ["api", "nope"], [])
    with pytest.raises(deploy.RolloutError, match="auto-scaling groups not found"):
        deploy.deploy_gpu(
            s.ec2, s.autoscaling, [f"{s.name}-gpu-nope"], s.gpu_repository, "x", sleep=no_sleep
        )


@on_moto
def test_rollback_restores_the_snapshot(stage: Callable[..., Stage]) -> None:
    s = stage()
    snap = deploy.snapshot(s.ecs, s.ec2, s.autoscaling, s.cluster, s.services, s.groups)
    assert snap == {
        "cluster": s.cluster,
        "services": s.initial,
        "gpu": {g: {"launch_template_id": s.templates[g], "version": 1} for g in s.groups},
    }
    deploy.deploy_ecs(
        s.ecs, s.cluster, s.services, s.repository, f"{s.repository}:new", sleep=no_sleep, poll=0
    )
    deploy.deploy_gpu(
        s.ec2,
        s.autoscaling,
        s.groups,
        s.gpu_repository,
        f"{s.gpu_repository}:new",
        sleep=no_sleep,
        poll=0,
    )
    # a refresh still running when the health check failed is cancelled first
    busy = s.groups[0]
    s.autoscaling.start_instance_refresh(AutoScalingGroupName=busy, Strategy="Rolling")
    deploy.rollback(
        s.ecs, s.ec2, s.autoscaling, json.loads(json.dumps(snap)), sleep=no_sleep, poll=0
    )

    assert s.running() == s.initial  # moto: every service back on its snapshot revision
    for group in s.groups:
        latest = s.template(group, "$Latest")
        assert latest["VersionNumber"] == 3 and latest["DefaultVersion"] is True
        assert latest["VersionDescription"] == "rollback to v1"
        assert s.gpu_image(group) == f"{s.gpu_repository}:old"
        assert (
            latest["LaunchTemplateData"]["UserData"]
            == s.template(group, "1")["LaunchTemplateData"]["UserData"]
        )
        refreshes = s.refreshes.refreshes[group]
        assert refreshes[0]["Status"] == "Successful"  # the rollback's own refresh
    statuses = [r["Status"] for r in s.refreshes.refreshes[busy]]
    assert statuses == ["Successful", "Cancelled", "Successful"]


@on_moto
def test_rollback_waits_for_a_circuit_breaker_rollback_in_progress(
    stage: Callable[..., Stage],
) -> None:
    s = stage(failing={"api"}, rollback_polls=3)
    snap = deploy.snapshot(s.ecs, None, None, s.cluster, s.services, [])
    with pytest.raises(deploy.RolloutError, match="api: tasks failed to start"):
        deploy.deploy_ecs(
            s.ecs,
            s.cluster,
            s.services,
            s.repository,
            f"{s.repository}:new",
            sleep=no_sleep,
            poll=0,
        )
    api = s.controller.public("api")[0]
    assert api["taskDefinition"] == s.initial["api"] and api["rolloutState"] == "IN_PROGRESS"
    deploy.rollback(s.ecs, None, None, snap, sleep=no_sleep, poll=0)
    assert s.running() == snap["services"] == s.initial
    assert s.controller.public("api")[0]["rolloutState"] == "COMPLETED"
    # the breaker had api on its way back already: rollback waited for it, updated the others
    assert s.controller.updates == {n: 1 if n == "api" else 2 for n in s.services}


@on_moto
def test_deploy_cli_snapshot_on_the_endpoint_of_AWS_ENDPOINT_URL(
    stage: Callable[..., Stage],
    aws: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # The workflow runs deploy.py with no endpoint option: boto3 reads AWS_ENDPOINT_URL itself.
    s = stage()
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws["endpoint_url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", aws["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws["aws_secret_access_key"])
    monkeypatch.setenv("AWS_REGION", aws["region_name"])
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "snapshot.json"
    argv = ["snapshot", "--cluster", s.cluster, "--services", " ".join(s.services)]
    assert deploy.main([*argv, "--asgs", " ".join(s.groups), "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == {
        "cluster": s.cluster,
        "services": s.initial,
        "gpu": {g: {"launch_template_id": s.templates[g], "version": 1} for g in s.groups},
    }
    assert deploy.main(["gpu", "--repository", "r", "--image", "r:1", "--asgs", ""]) == 0


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
