"""Rollout steps of the release pipeline (.github/workflows/release.yml), on boto3.

The ECS services run task definitions that Terraform first registered (modules/compute); a
release renders each service's current task definition with the new image, registers it as
a new revision and rolls the service onto it (the services' deployment circuit breaker rolls
a failing one back by itself). The GPU workers are EC2 auto-scaling groups whose launch
template user data names the image: a release adds a launch template version with the new
image, makes it the default (the groups launch `$Latest`) and starts an instance refresh.

    deploy.py snapshot --cluster C --services "api relay" --asgs "g1 g2" --out snapshot.json
    deploy.py ecs      --cluster C --services "api relay" --repository R --image R:TAG
    deploy.py gpu      --asgs "g1 g2" --repository R --image R:TAG
    deploy.py rollback --snapshot snapshot.json

`snapshot` records what runs now (task definition per service, launch template version per
group); `rollback` puts it back: the services onto their previous task definitions, the
groups onto a copy of their previous launch template version, then a refresh. Every command
exits non-zero when the rollout did not end where it should, so the workflow's next step
(health check, rollback) sees it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

# What RegisterTaskDefinition accepts of what DescribeTaskDefinition returns.
REGISTERABLE = (
    "family",
    "taskRoleArn",
    "executionRoleArn",
    "networkMode",
    "containerDefinitions",
    "volumes",
    "placementConstraints",
    "requiresCompatibilities",
    "cpu",
    "memory",
    "pidMode",
    "ipcMode",
    "proxyConfiguration",
    "inferenceAccelerators",
    "ephemeralStorage",
    "runtimePlatform",
)

REFRESH_DONE = {"Successful"}
REFRESH_FAILED = {"Failed", "Cancelled", "RollbackSuccessful", "RollbackFailed"}


class RolloutError(Exception):
    """The rollout did not end where it should."""


def log(message: str) -> None:
    print(message, flush=True)


def summary(line: str) -> None:
    """A line of the job summary on GitHub, else of the log."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    log(line)


def _is_image_of(image: str, repository: str) -> bool:
    return image == repository or image.startswith((repository + ":", repository + "@"))


def render_task_definition(
    task_definition: dict[str, Any], repository: str, image: str
) -> dict[str, Any]:
    """RegisterTaskDefinition arguments: the task definition with `image` in every container
    that runs an image of `repository` (the service's own and the lag-metric sidecar)."""
    rendered = {k: task_definition[k] for k in REGISTERABLE if task_definition.get(k)}
    containers = [dict(c) for c in task_definition["containerDefinitions"]]
    swapped = 0
    for c in containers:
        if _is_image_of(c["image"], repository):
            c["image"] = image
            swapped += 1
    if not swapped:
        names = ", ".join(f"{c['name']}={c['image']}" for c in containers)
        raise RolloutError(
            f"{task_definition['family']}: no container runs an image of {repository} ({names})"
        )
    rendered["containerDefinitions"] = containers
    return rendered


def swap_image(text: str, repository: str, image: str) -> tuple[str, int]:
    """Every `<repository>:<tag>` or `<repository>@sha256:<digest>` in text, now `image`."""
    pattern = re.escape(repository) + r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})"
    return re.subn(pattern, image, text)


def _words(value: str | Iterable[str]) -> list[str]:
    if isinstance(value, str):
        return value.split()
    return [w for v in value for w in v.split()]


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# --- ECS ------------------------------------------------------------------------------------


def describe_services(ecs: Any, cluster: str, services: list[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for chunk in _chunks(services, 10):  # DescribeServices takes at most 10
        resp = ecs.describe_services(cluster=cluster, services=chunk)
        if resp.get("failures"):
            raise RolloutError(f"services not found in {cluster}: {resp['failures']}")
        for s in resp["services"]:
            found[s["serviceName"]] = s
    missing = set(services) - set(found)
    if missing:
        raise RolloutError(f"services not found in {cluster}: {sorted(missing)}")
    return found


def primary_deployment(service: dict[str, Any]) -> dict[str, Any] | None:
    return next((d for d in service.get("deployments", []) if d.get("status") == "PRIMARY"), None)


def rollout_state(service: dict[str, Any], task_definition: str) -> str:
    """COMPLETED, FAILED or IN_PROGRESS of the service's rollout onto `task_definition`.

    UpdateService makes a new PRIMARY deployment at once; it is COMPLETED once the service
    reached its steady state on it. When the circuit breaker trips, that deployment turns
    FAILED and a new PRIMARY deployment of the previous revision replaces it."""
    primary = primary_deployment(service)
    if primary is None or primary.get("taskDefinition") != task_definition:
        return "FAILED"
    state = str(primary.get("rolloutState", "IN_PROGRESS"))
    if state == "COMPLETED" and primary.get("runningCount", 0) < primary.get("desiredCount", 0):
        return "IN_PROGRESS"
    return state


def wait_all(
    pending: dict[str, str],
    check: Callable[[dict[str, str]], dict[str, str | None]],
    *,
    what: str,
    timeout: float,
    poll: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Poll ``check`` every ``poll`` seconds until every pending name finished: ``check`` gets
    the names still pending and returns those that finished, with None (done) or why they
    failed. Raises once all finished if any failed, or when ``timeout`` seconds are up."""
    deadline = clock() + timeout
    pending = dict(pending)
    failed: dict[str, str] = {}
    while pending:
        for name, reason in check(pending).items():
            del pending[name]
            if reason is not None:
                failed[name] = reason
        if not pending:
            break
        if clock() >= deadline:
            raise RolloutError(f"{what} after {timeout:.0f}s: {sorted(pending)}")
        sleep(poll)
    if failed:
        raise RolloutError("; ".join(f"{n}: {r}" for n, r in sorted(failed.items())))


def wait_for_services(
    ecs: Any,
    cluster: str,
    targets: dict[str, str],
    *,
    timeout: float,
    poll: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Until every service's deployment of its target task definition completed; raises when
    one failed (the circuit breaker rolled it back) or the time is up."""

    def check(pending: dict[str, str]) -> dict[str, str | None]:
        described = describe_services(ecs, cluster, sorted(pending))
        finished: dict[str, str | None] = {}
        for name, td in pending.items():
            state = rollout_state(described[name], td)
            if state == "COMPLETED":
                log(f"  {name}: {td.rsplit('/', 1)[-1]} completed")
                finished[name] = None
            elif state == "FAILED":
                reason = next(
                    (
                        d.get("rolloutStateReason", "")
                        for d in described[name].get("deployments", [])
                        if d.get("taskDefinition") == td
                    ),
                    "rolled back by the deployment circuit breaker",
                )
                finished[name] = reason or "rolled back"
        return finished

    wait_all(
        targets,
        check,
        what="still rolling out",
        timeout=timeout,
        poll=poll,
        clock=clock,
        sleep=sleep,
    )


def deploy_ecs(
    ecs: Any,
    cluster: str,
    services: list[str],
    repository: str,
    image: str,
    *,
    timeout: float = 1800,
    poll: float = 15,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """Each service onto a new revision of its task definition that runs `image`."""
    current = describe_services(ecs, cluster, services)
    targets: dict[str, str] = {}
    for name in services:
        resp = ecs.describe_task_definition(
            taskDefinition=current[name]["taskDefinition"], include=["TAGS"]
        )
        rendered = render_task_definition(resp["taskDefinition"], repository, image)
        if resp.get("tags"):
            rendered["tags"] = resp["tags"]
        new = ecs.register_task_definition(**rendered)["taskDefinition"]["taskDefinitionArn"]
        ecs.update_service(cluster=cluster, service=name, taskDefinition=new)
        log(f"  {name}: {current[name]['taskDefinition'].rsplit('/', 1)[-1]} -> {new}")
        targets[name] = new
    wait_for_services(ecs, cluster, targets, timeout=timeout, poll=poll, sleep=sleep)
    for name, td in targets.items():
        summary(f"- ECS `{name}`: `{td.rsplit('/', 1)[-1]}` (`{image}`)")
    return targets


# --- GPU auto-scaling groups ----------------------------------------------------------------


def launch_template_of(group: dict[str, Any]) -> dict[str, str]:
    spec = group.get("MixedInstancesPolicy", {}).get("LaunchTemplate", {}).get(
        "LaunchTemplateSpecification"
    ) or group.get("LaunchTemplate")
    if not spec or "LaunchTemplateId" not in spec:
        raise RolloutError(f"{group['AutoScalingGroupName']}: no launch template")
    return {"id": spec["LaunchTemplateId"], "version": spec.get("Version", "$Default")}


def describe_groups(autoscaling: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    resp = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=names)
    found = {g["AutoScalingGroupName"]: g for g in resp["AutoScalingGroups"]}
    missing = set(names) - set(found)
    if missing:
        raise RolloutError(f"auto-scaling groups not found: {sorted(missing)}")
    return found


def latest_version(ec2: Any, template_id: str) -> dict[str, Any]:
    resp = ec2.describe_launch_template_versions(LaunchTemplateId=template_id, Versions=["$Latest"])
    return dict(resp["LaunchTemplateVersions"][0])


def start_refresh(autoscaling: Any, group: str, *, min_healthy: int, max_healthy: int) -> str:
    resp = autoscaling.start_instance_refresh(
        AutoScalingGroupName=group,
        Strategy="Rolling",
        Preferences={
            "MinHealthyPercentage": min_healthy,
            "MaxHealthyPercentage": max_healthy,
            "SkipMatching": False,
        },
    )
    return str(resp["InstanceRefreshId"])


def wait_for_refreshes(
    autoscaling: Any,
    refreshes: dict[str, str],
    *,
    timeout: float,
    poll: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Until every group's instance refresh succeeded; raises when one failed or the time is
    up."""

    def check(pending: dict[str, str]) -> dict[str, str | None]:
        finished: dict[str, str | None] = {}
        for group, refresh_id in pending.items():
            resp = autoscaling.describe_instance_refreshes(
                AutoScalingGroupName=group, InstanceRefreshIds=[refresh_id]
            )
            r = resp["InstanceRefreshes"][0]
            status = r["Status"]
            if status in REFRESH_DONE:
                log(f"  {group}: instance refresh {refresh_id} successful")
                finished[group] = None
            elif status in REFRESH_FAILED:
                finished[group] = f"{status}: {r.get('StatusReason', '')}".strip()
            else:
                log(f"  {group}: {status} {r.get('PercentageComplete', 0)}%")
        return finished

    wait_all(
        refreshes,
        check,
        what="instance refresh still running",
        timeout=timeout,
        poll=poll,
        clock=clock,
        sleep=sleep,
    )


def deploy_gpu(
    ec2: Any,
    autoscaling: Any,
    groups: list[str],
    repository: str,
    image: str,
    *,
    min_healthy: int = 100,
    max_healthy: int = 200,
    timeout: float = 3600,
    poll: float = 30,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """A launch template version running `image` per group, made the default, then an
    instance refresh; waits for every refresh."""
    refreshes: dict[str, str] = {}
    for name, group in describe_groups(autoscaling, groups).items():
        lt = launch_template_of(group)
        if lt["version"] not in ("$Latest", "$Default"):
            raise RolloutError(
                f"{name} pins launch template version {lt['version']}; "
                "modules/compute/gpu.tf launches $Latest"
            )
        latest = latest_version(ec2, lt["id"])
        user_data = base64.b64decode(latest["LaunchTemplateData"]["UserData"]).decode()
        swapped, count = swap_image(user_data, repository, image)
        if count == 0:
            raise RolloutError(f"{name}: the user data runs no image of {repository}")
        if swapped == user_data:
            log(f"  {name}: launch template {lt['id']} v{latest['VersionNumber']} runs {image}")
            version = int(latest["VersionNumber"])
        else:
            created = ec2.create_launch_template_version(
                LaunchTemplateId=lt["id"],
                SourceVersion=str(latest["VersionNumber"]),
                VersionDescription=f"release {image.rsplit('/', 1)[-1]}"[:255],
                LaunchTemplateData={"UserData": base64.b64encode(swapped.encode()).decode()},
            )
            version = int(created["LaunchTemplateVersion"]["VersionNumber"])
            log(f"  {name}: launch template {lt['id']} v{latest['VersionNumber']} -> v{version}")
        ec2.modify_launch_template(LaunchTemplateId=lt["id"], DefaultVersion=str(version))
        refreshes[name] = start_refresh(
            autoscaling, name, min_healthy=min_healthy, max_healthy=max_healthy
        )
    wait_for_refreshes(autoscaling, refreshes, timeout=timeout, poll=poll, sleep=sleep)
    for name in refreshes:
        summary(f"- GPU group `{name}`: instances refreshed onto `{image}`")
    return refreshes


# --- snapshot and rollback ------------------------------------------------------------------


def snapshot(
    ecs: Any, ec2: Any, autoscaling: Any, cluster: str, services: list[str], groups: list[str]
) -> dict[str, Any]:
    described = describe_services(ecs, cluster, services)
    gpu: dict[str, Any] = {}
    if groups:
        for name, group in describe_groups(autoscaling, groups).items():
            lt = launch_template_of(group)
            gpu[name] = {
                "launch_template_id": lt["id"],
                "version": int(latest_version(ec2, lt["id"])["VersionNumber"]),
            }
    return {
        "cluster": cluster,
        "services": {n: described[n]["taskDefinition"] for n in services},
        "gpu": gpu,
    }


def rollback(
    ecs: Any,
    ec2: Any,
    autoscaling: Any,
    snap: dict[str, Any],
    *,
    min_healthy: int = 100,
    max_healthy: int = 200,
    timeout: float = 3600,
    poll: float = 15,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """What `snapshot` recorded, back: services first (they carry the traffic), then GPUs."""
    cluster = snap["cluster"]
    errors: list[str] = []
    targets: dict[str, str] = {}
    current = describe_services(ecs, cluster, list(snap["services"]))
    for name, td in snap["services"].items():
        primary = primary_deployment(current[name]) or {}
        if primary.get("taskDefinition") == td:
            if rollout_state(current[name], td) != "COMPLETED":
                targets[name] = td  # the circuit breaker is rolling it back already
            continue
        ecs.update_service(cluster=cluster, service=name, taskDefinition=td)
        log(f"  {name}: back to {td.rsplit('/', 1)[-1]}")
        targets[name] = td
    try:
        wait_for_services(ecs, cluster, targets, timeout=timeout, poll=poll, sleep=sleep)
    except RolloutError as e:
        errors.append(str(e))

    refreshes: dict[str, str] = {}
    for name, prev in snap["gpu"].items():
        try:
            autoscaling.cancel_instance_refresh(AutoScalingGroupName=name)
            log(f"  {name}: cancelled the instance refresh in progress")
            _wait_no_active_refresh(autoscaling, name, timeout=600, poll=poll, sleep=sleep)
        except Exception as e:
            # nothing to cancel (botocore's model names the code without the dot)
            if _error_code(e) not in (
                "ActiveInstanceRefreshNotFound",
                "ActiveInstanceRefresh.NotFound",
            ):
                raise
        latest = latest_version(ec2, prev["launch_template_id"])
        if int(latest["VersionNumber"]) == prev["version"]:
            log(f"  {name}: launch template still at v{prev['version']}")
            continue
        # A copy of the previous version becomes $Latest (the groups launch $Latest). Its user
        # data (the image) is named explicitly, as the rollout names the one it sets, so the
        # copy never depends on SourceVersion alone (moto, the local AWS, ignores it).
        resp = ec2.describe_launch_template_versions(
            LaunchTemplateId=prev["launch_template_id"], Versions=[str(prev["version"])]
        )
        user_data = resp["LaunchTemplateVersions"][0]["LaunchTemplateData"]["UserData"]
        created = ec2.create_launch_template_version(
            LaunchTemplateId=prev["launch_template_id"],
            SourceVersion=str(prev["version"]),
            VersionDescription=f"rollback to v{prev['version']}",
            LaunchTemplateData={"UserData": user_data},
        )
        version = str(created["LaunchTemplateVersion"]["VersionNumber"])
        ec2.modify_launch_template(
            LaunchTemplateId=prev["launch_template_id"], DefaultVersion=version
        )
        log(f"  {name}: launch template v{prev['version']} copied as v{version}")
        refreshes[name] = start_refresh(
            autoscaling, name, min_healthy=min_healthy, max_healthy=max_healthy
        )
    try:
        wait_for_refreshes(autoscaling, refreshes, timeout=timeout, poll=poll, sleep=sleep)
    except RolloutError as e:
        errors.append(str(e))
    summary(
        f"- rolled back: {len(targets)} service(s), {len(refreshes)} GPU group(s)"
        + (f"; errors: {'; '.join(errors)}" if errors else "")
    )
    if errors:
        raise RolloutError("; ".join(errors))


def _error_code(e: Exception) -> str:
    """The AWS error code of a botocore ClientError, else ''."""
    response = getattr(e, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def _wait_no_active_refresh(
    autoscaling: Any, group: str, *, timeout: float, poll: float, sleep: Callable[[float], None]
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        resp = autoscaling.describe_instance_refreshes(AutoScalingGroupName=group, MaxRecords=1)
        items = resp.get("InstanceRefreshes", [])
        if not items or items[0]["Status"] not in ("Pending", "InProgress", "Cancelling"):
            return
        if time.monotonic() >= deadline:
            raise RolloutError(f"{group}: the cancelled refresh is still {items[0]['Status']}")
        sleep(poll)


# --- command line ---------------------------------------------------------------------------


def _clients(region: str | None) -> tuple[Any, Any, Any]:
    import boto3

    session = boto3.session.Session(region_name=region)
    return session.client("ecs"), session.client("ec2"), session.client("autoscaling")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--region", default=os.environ.get("AWS_REGION"))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("snapshot", help="record the running task definitions and versions")
    p.add_argument("--cluster", required=True)
    p.add_argument("--services", required=True, action="append")
    p.add_argument("--asgs", default=[], action="append")
    p.add_argument("--out", required=True)

    p = sub.add_parser("ecs", help="roll the services onto the image")
    p.add_argument("--cluster", required=True)
    p.add_argument("--services", required=True, action="append")
    p.add_argument("--repository", required=True, help="the image's repository URI")
    p.add_argument("--image", required=True, help="<repository>:<tag>")
    p.add_argument("--timeout", type=float, default=1800)

    p = sub.add_parser("gpu", help="refresh the GPU groups onto the image")
    p.add_argument("--asgs", required=True, action="append")
    p.add_argument("--repository", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--min-healthy", type=int, default=100)
    p.add_argument("--max-healthy", type=int, default=200)
    p.add_argument("--timeout", type=float, default=3600)

    p = sub.add_parser("rollback", help="put back what a snapshot recorded")
    p.add_argument("--snapshot", required=True)
    p.add_argument("--timeout", type=float, default=3600)

    args = parser.parse_args(argv)
    ecs, ec2, autoscaling = _clients(args.region)
    try:
        if args.command == "snapshot":
            snap = snapshot(
                ecs, ec2, autoscaling, args.cluster, _words(args.services), _words(args.asgs)
            )
            with open(args.out, "w", encoding="utf-8") as f:
                json.dump(snap, f, indent=2)
            log(json.dumps(snap, indent=2))
        elif args.command == "ecs":
            if not _is_image_of(args.image, args.repository):
                parser.error(f"--image {args.image} is not an image of {args.repository}")
            deploy_ecs(
                ecs,
                args.cluster,
                _words(args.services),
                args.repository,
                args.image,
                timeout=args.timeout,
            )
        elif args.command == "gpu":
            if not _is_image_of(args.image, args.repository):
                parser.error(f"--image {args.image} is not an image of {args.repository}")
            groups = _words(args.asgs)
            if not groups:
                log("no GPU groups")
                return 0
            deploy_gpu(
                ec2,
                autoscaling,
                groups,
                args.repository,
                args.image,
                min_healthy=args.min_healthy,
                max_healthy=args.max_healthy,
                timeout=args.timeout,
            )
        else:
            with open(args.snapshot, encoding="utf-8") as f:
                snap = json.load(f)
            rollback(ecs, ec2, autoscaling, snap, timeout=args.timeout)
    except RolloutError as e:
        log(f"::error::{e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
