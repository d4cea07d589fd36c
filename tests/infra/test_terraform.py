"""Static checks of infra/terraform: the operator's deployment plan, read back from the HCL.

`tofu validate`/`plan` need the AWS provider, which cannot be downloaded here, so these tests
parse every .tf file (python-hcl2) and assert the properties of the plan literally: subnets,
security-group rules, encryption of every data store, Multi-AZ, tags, GPU scaling thresholds
and alarm thresholds. They also cross-check what validate would: module arguments against
module variables, module outputs, and every var./local./resource reference.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra.hcl_config import TERRAFORM, Config, Resource, load_config, load_tfvars

REGION = "ap-northeast-2"
PUBLIC = ["10.0.1.0/24", "10.0.2.0/24"]
PRIVATE = ["10.0.11.0/24", "10.0.12.0/24"]
DATA = ["10.0.21.0/24", "10.0.22.0/24"]
MSK_THIRD_SUBNET = "10.0.23.0/24"
ANYWHERE = {"0.0.0.0/0", "::/0"}


@pytest.fixture(scope="module")
def tf() -> Config:
    return load_config()


@pytest.fixture(scope="module")
def tfvars() -> dict[str, dict[str, Any]]:
    return load_tfvars()


def block(body: dict[str, Any], name: str) -> dict[str, Any]:
    """The single nested block ``name`` of a resource body."""
    value = body.get(name)
    assert isinstance(value, list) and len(value) == 1, f"expected one {name} block, got {value!r}"
    first: dict[str, Any] = value[0]
    return first


def default(tf: Config, var: str) -> Any:
    return tf.variables("root")[var].get("default")


def ref_name(expr: str, rtype: str) -> str:
    m = re.search(rf"{rtype}\.([a-z0-9_]+)", expr)
    assert m, f"{expr!r} does not reference a {rtype}"
    return m.group(1)


# ----------------------------------------------------------------------------------------------
# Layout and region
# ----------------------------------------------------------------------------------------------


def test_modules_and_env_files_exist(tf: Config, tfvars: dict[str, dict[str, Any]]) -> None:
    assert {"network", "security", "data", "storage", "compute", "identity", "observability"} <= (
        tf.modules()
    )
    for f in ("main.tf", "variables.tf", "outputs.tf", "versions.tf"):
        assert (TERRAFORM / f).is_file(), f
    assert set(tfvars) == {"staging", "production"}
    for env, values in tfvars.items():
        assert values["environment"] == env
        assert values["region"] == REGION


def test_region_is_seoul(tf: Config) -> None:
    assert default(tf, "region") == REGION
    providers = [body for name, body, _ in tf.blocks("provider", "root") if name == "aws"]
    regions = sorted(p["region"] for p in providers)
    # the default provider, plus us-east-1 for the CloudFront certificate and web ACL only
    assert regions == sorted(["${var.region}", "us-east-1"])


# ----------------------------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------------------------


def test_subnet_plan(tf: Config, tfvars: dict[str, dict[str, Any]]) -> None:
    assert default(tf, "vpc_cidr") == "10.0.0.0/16"
    assert default(tf, "public_subnet_cidrs") == PUBLIC
    assert default(tf, "private_subnet_cidrs") == PRIVATE
    assert default(tf, "data_subnet_cidrs") == [*DATA, MSK_THIRD_SUBNET]
    assert len(default(tf, "availability_zones")) == 2
    for values in tfvars.values():
        assert values["vpc_cidr"] == "10.0.0.0/16"
        assert values["public_subnet_cidrs"] == PUBLIC
        assert values["private_subnet_cidrs"] == PRIVATE
        assert values["data_subnet_cidrs"] == [*DATA, MSK_THIRD_SUBNET]
        assert len(values["availability_zones"]) == 2
        assert values["msk_third_availability_zone"] not in values["availability_zones"]


def test_network_module_wiring(tf: Config) -> None:
    call = tf.module_calls()["network"]
    assert call["vpc_cidr"] == "${var.vpc_cidr}"
    assert call["public_subnet_cidrs"] == "${var.public_subnet_cidrs}"
    assert call["private_subnet_cidrs"] == "${var.private_subnet_cidrs}"
    assert call["data_subnet_cidrs"] == "${var.data_subnet_cidrs}"
    vpc = tf.resource("aws_vpc", "main", "network")
    assert vpc.body["cidr_block"] == "${var.vpc_cidr}"
    for tier in ("public", "private", "data"):
        subnet = tf.resource("aws_subnet", tier, "network")
        assert subnet.body["cidr_block"] == f"${{var.{tier}_subnet_cidrs[count.index]}}"
        assert subnet.body["map_public_ip_on_launch"] is False


def test_one_nat_gateway_per_az(tf: Config) -> None:
    nat = tf.resource("aws_nat_gateway", "main", "network")
    assert nat.body["count"] == "${length(var.public_subnet_cidrs)}"
    assert nat.body["subnet_id"] == "${aws_subnet.public[count.index].id}"
    route = tf.resource("aws_route", "private_nat", "network")
    assert route.body["nat_gateway_id"] == "${aws_nat_gateway.main[count.index].id}"
    # data subnets never route out of the VPC
    data_rt = tf.resource("aws_route_table", "data", "network")
    assert "route" not in data_rt.body
    assert not [
        r for r in tf.resources("aws_route", "network") if "aws_route_table.data" in str(r.body)
    ]


def test_flow_logs_and_default_security_group_closed(tf: Config) -> None:
    flow = tf.resource("aws_flow_log", "main", "network")
    assert flow.body["traffic_type"] == "ALL"
    default_sg = tf.resource("aws_default_security_group", "default", "network")
    assert "ingress" not in default_sg.body and "egress" not in default_sg.body


# ----------------------------------------------------------------------------------------------
# Security groups
# ----------------------------------------------------------------------------------------------


def _rules(tf: Config, kind: str) -> list[dict[str, Any]]:
    """Every ingress or egress rule, for_each expanded, as {sg, port, cidr, source}."""
    out: list[dict[str, Any]] = []
    store_access = tf.locals("security")["store_access"]
    clients = tf.locals("security")["clients"]
    for r in tf.resources(f"aws_vpc_security_group_{kind}_rule"):
        body = r.body
        if body.get("for_each") == "${local.store_access}":
            for key, entry in store_access.items():
                store = ref_name(entry["store"], "aws_security_group")
                client = ref_name(clients[entry["client"]], "aws_security_group")
                sg, peer = (store, client) if kind == "ingress" else (client, store)
                out.append(
                    {
                        "rule": f"{r.name}[{key}]",
                        "sg": sg,
                        "from": entry["port"],
                        "to": entry["port"],
                        "cidr": None,
                        "peer": peer,
                    }
                )
        elif body.get("for_each") == "${local.clients}":
            for key, sg_expr in clients.items():
                cidr = body["cidr_ipv4"]
                if cidr == "${local.https_anywhere}":
                    cidr = tf.locals("security")["https_anywhere"]
                out.append(
                    {
                        "rule": f"{r.name}[{key}]",
                        "sg": ref_name(sg_expr, "aws_security_group"),
                        "from": body["from_port"],
                        "to": body["to_port"],
                        "cidr": cidr,
                        "peer": None,
                    }
                )
        else:
            assert "for_each" not in body and "count" not in body, r.address
            peer_ref = body.get("referenced_security_group_id")
            out.append(
                {
                    "rule": r.name,
                    "sg": ref_name(body["security_group_id"], "aws_security_group"),
                    "from": body["from_port"],
                    "to": body["to_port"],
                    "cidr": body.get("cidr_ipv4") or body.get("cidr_ipv6"),
                    "peer": ref_name(peer_ref, "aws_security_group") if peer_ref else None,
                }
            )
    return out


def test_no_inline_security_group_rules(tf: Config) -> None:
    for sg in tf.resources("aws_security_group"):
        assert "ingress" not in sg.body and "egress" not in sg.body, sg.address


def test_only_the_alb_accepts_traffic_from_anywhere(tf: Config) -> None:
    ingress = _rules(tf, "ingress")
    assert ingress, "no ingress rules parsed"
    open_rules = [r for r in ingress if r["cidr"] in ANYWHERE]
    assert sorted((r["sg"], r["from"], r["to"]) for r in open_rules) == [
        ("alb", 80, 80),
        ("alb", 443, 443),
    ]
    # no ingress rule anywhere names a CIDR other than the ALB's two
    assert all(r["cidr"] is None for r in ingress if r not in open_rules)


def test_security_group_matrix(tf: Config) -> None:
    ingress = {(r["sg"], r["from"], r["to"], r["peer"]) for r in _rules(tf, "ingress")}
    expected = {
        ("alb", 80, 80, None),
        ("alb", 443, 443, None),
        ("api", 8080, 8080, "alb"),
        ("db", 5432, 5432, "api"),
        ("db", 5432, 5432, "pipeline"),
        ("redis", 6379, 6379, "api"),
        ("redis", 6379, 6379, "pipeline"),
        ("redis", 6379, 6379, "gpu"),
        ("msk", 9098, 9098, "api"),
        ("msk", 9098, 9098, "pipeline"),
        ("msk", 9098, 9098, "gpu"),
        ("efs", 2049, 2049, "gpu"),
    }
    assert ingress == expected
    # nothing reaches the pipeline services or the GPU workers
    assert not [r for r in ingress if r[0] in ("pipeline", "gpu")]


def test_egress_is_limited(tf: Config) -> None:
    egress = _rules(tf, "egress")
    for r in egress:
        if r["cidr"] is not None:
            assert r["cidr"] == "0.0.0.0/0" and (r["from"], r["to"]) == (443, 443), r
            assert r["sg"] in ("api", "pipeline", "gpu"), r
    # the data stores and the ALB have no egress to the internet
    assert not [r for r in egress if r["sg"] in ("db", "redis", "msk", "efs") and r["cidr"]]
    assert {(r["sg"], r["peer"], r["from"]) for r in egress if r["sg"] == "alb"} == {
        ("alb", "api", 8080)
    }


# ----------------------------------------------------------------------------------------------
# Data stores: encryption, Multi-AZ, backups
# ----------------------------------------------------------------------------------------------


def test_rds_postgres(tf: Config) -> None:
    db = tf.resource("aws_db_instance", "main", "data").body
    assert db["engine"] == "postgres"
    assert str(db["engine_version"]).split(".")[0] == "16"
    assert db["multi_az"] is True
    assert db["storage_type"] == "gp3"
    assert db["storage_encrypted"] is True
    assert db["kms_key_id"] == "${var.kms_key_arn}"
    assert db["backup_retention_period"] == 7
    assert db["performance_insights_enabled"] is True
    assert db["performance_insights_kms_key_id"] == "${var.kms_key_arn}"
    assert db["deletion_protection"] is True
    assert db["publicly_accessible"] is False
    assert db["skip_final_snapshot"] is False
    params = {
        p["name"]: p["value"]
        for p in tf.resource("aws_db_parameter_group", "postgres16").body["parameter"]
    }
    assert params["rds.force_ssl"] == "1"
    assert params["max_connections"] == "${tostring(var.db_max_connections)}"


def test_msk(tf: Config) -> None:
    msk = tf.resource("aws_msk_cluster", "main", "data").body
    assert msk["number_of_broker_nodes"] == 3
    enc = block(msk, "encryption_info")
    assert enc["encryption_at_rest_kms_key_arn"] == "${var.kms_key_arn}"
    transit = block(enc, "encryption_in_transit")
    assert transit["client_broker"] == "TLS" and transit["in_cluster"] is True
    auth = block(msk, "client_authentication")
    assert auth["unauthenticated"] is False
    assert block(auth, "sasl")["iam"] is True
    broker = block(msk, "broker_node_group_info")
    assert broker["client_subnets"] == "${var.data_subnet_ids}"
    assert block(block(broker, "connectivity_info"), "public_access")["type"] == "DISABLED"
    config = tf.resource("aws_msk_configuration", "main", "data").body["server_properties"]
    assert "min.insync.replicas=2" in config and "default.replication.factor=3" in config


def test_redis(tf: Config) -> None:
    redis = tf.resource("aws_elasticache_replication_group", "main", "data").body
    assert redis["num_cache_clusters"] >= 2  # primary + replica
    assert redis["automatic_failover_enabled"] is True
    assert redis["multi_az_enabled"] is True
    assert redis["at_rest_encryption_enabled"] is True
    assert redis["transit_encryption_enabled"] is True
    assert redis["kms_key_id"] == "${var.kms_key_arn}"
    assert redis["auth_token"]


def test_efs_and_ebs_encrypted(tf: Config) -> None:
    efs = tf.resource("aws_efs_file_system", "models", "data").body
    assert efs["encrypted"] is True and efs["kms_key_id"] == "${var.kms_key_arn}"
    lt = tf.resource("aws_launch_template", "gpu", "compute").body
    ebs = block(block(lt, "block_device_mappings"), "ebs")
    assert ebs["encrypted"] is True and ebs["volume_type"] == "gp3"
    assert block(lt, "metadata_options")["http_tokens"] == "required"


def test_every_s3_bucket_is_private_versioned_encrypted_and_tiered(tf: Config) -> None:
    buckets = tf.resource("aws_s3_bucket", "this", "storage")
    names = tf.locals("storage")
    assert names["kms_buckets"] == '${toset(["images", "models", "frontend"])}'
    assert buckets.body["for_each"] == "${local.all_buckets}"
    for rtype in (
        "aws_s3_bucket_public_access_block",
        "aws_s3_bucket_versioning",
        "aws_s3_bucket_server_side_encryption_configuration",
        "aws_s3_bucket_lifecycle_configuration",
        "aws_s3_bucket_policy",
    ):
        # one per bucket, whatever buckets there are
        assert tf.resource(rtype, "this", "storage").body["for_each"] == "${aws_s3_bucket.this}"
    pab = tf.resource("aws_s3_bucket_public_access_block", "this").body
    for flag in (
        "block_public_acls",
        "block_public_policy",
        "ignore_public_acls",
        "restrict_public_buckets",
    ):
        assert pab[flag] is True, flag
    versioning = tf.resource("aws_s3_bucket_versioning", "this").body
    assert block(versioning, "versioning_configuration")["status"] == "Enabled"
    sse = tf.resource("aws_s3_bucket_server_side_encryption_configuration", "this").body
    default_enc = block(block(sse, "rule"), "apply_server_side_encryption_by_default")
    assert "aws:kms" in default_enc["sse_algorithm"]
    assert default_enc["kms_master_key_id"].count("var.kms_key_arn") == 1
    lifecycle = tf.resource("aws_s3_bucket_lifecycle_configuration", "this").body
    rule = lifecycle["rule"][0]
    assert rule["status"] == "Enabled"
    transition = block(rule, "transition")
    assert transition == {"days": 30, "storage_class": "STANDARD_IA"}
    # every bucket policy refuses plain HTTP
    policy = next(b for n, b, _ in tf.blocks("data", "storage") if n == "aws_iam_policy_document")
    statement = policy["bucket"]["statement"][0]
    assert statement["effect"] == "Deny"
    assert block(statement, "condition")["variable"] == "aws:SecureTransport"


def test_secrets_and_logs_use_the_customer_key(tf: Config) -> None:
    secrets = tf.resources("aws_secretsmanager_secret")
    assert {s.name for s in secrets} >= {"database", "redis", "stripe", "cognito"}
    for s in secrets:
        assert s.body["kms_key_id"] == "${var.kms_key_arn}", s.address
    for lg in tf.resources("aws_cloudwatch_log_group"):
        skipped = "CKV_AWS_158" in lg.file.read_text() and lg.name == "waf_cloudfront"
        assert skipped or lg.body.get("kms_key_id") == "${var.kms_key_arn}", lg.address
        assert lg.body["retention_in_days"] == "${var.log_retention_days}", lg.address
    assert tf.resource("aws_sns_topic", "alarms").body["kms_master_key_id"] == "${var.kms_key_arn}"
    key = tf.resource("aws_kms_key", "main", "security").body
    assert key["enable_key_rotation"] is True


# ----------------------------------------------------------------------------------------------
# Edge: CloudFront, WAF, DNS
# ----------------------------------------------------------------------------------------------


def test_cloudfront_signed_images_api_and_waf(tf: Config) -> None:
    cf = tf.resource("aws_cloudfront_distribution", "main", "storage").body
    assert cf["web_acl_id"] == "${aws_wafv2_web_acl.cloudfront.arn}"
    origins = {o["origin_id"]: o for o in cf["origin"]}
    assert set(origins) == {"frontend", "images", "api"}
    assert "origin_access_control_id" in origins["images"]
    assert block(origins["api"], "custom_origin_config")["origin_protocol_policy"] == "https-only"
    behaviours = {b["path_pattern"]: b for b in cf["ordered_cache_behavior"]}
    images = behaviours["/users/*"]  # S3 keys: users/{user_id}/images/...
    assert images["target_origin_id"] == "images"
    assert images["trusted_key_groups"] == ["${aws_cloudfront_key_group.signer.id}"]
    assert behaviours["/api/*"]["target_origin_id"] == "api"
    assert block(cf, "default_cache_behavior")["target_origin_id"] == "frontend"
    assert block(cf, "viewer_certificate")["minimum_protocol_version"].startswith("TLSv1.2")
    assert tf.resource("aws_wafv2_web_acl", "cloudfront").body["scope"] == "CLOUDFRONT"
    assert tf.resource("aws_wafv2_web_acl", "alb").body["scope"] == "REGIONAL"
    assert tf.resource("aws_wafv2_web_acl_association", "alb").body["resource_arn"] == (
        "${aws_lb.api.arn}"
    )
    assert tf.resource("aws_route53_zone", "main")
    assert {c.name for c in tf.resources("aws_acm_certificate")} == {"cdn", "origin"}


def test_alb_listeners(tf: Config) -> None:
    http = tf.resource("aws_lb_listener", "http", "compute").body
    assert http["port"] == 80
    assert block(http, "default_action")["type"] == "redirect"
    https = tf.resource("aws_lb_listener", "https", "compute").body
    assert https["port"] == 443 and https["protocol"] == "HTTPS"
    tg = tf.resource("aws_lb_target_group", "api", "compute").body
    assert tg["port"] == 8080
    assert block(tg, "health_check")["path"] == "/healthz"


# ----------------------------------------------------------------------------------------------
# Compute: Fargate services, GPU auto-scaling on consumer lag
# ----------------------------------------------------------------------------------------------


def test_lag_metric_sidecar_runs_a_command_that_exists(tf: Config) -> None:
    import typer.main

    from cli.main import app

    command = typer.main.get_command(app).commands["lag-metric"]  # type: ignore[attr-defined]
    accepted = {opt for param in command.params for opt in param.opts}
    lag = tf.locals("compute")["lag_metric_command"]
    assert lag[:2] == ["pinksea", "lag-metric"]
    assert {a for a in lag[2:] if a.startswith("--")} <= accepted


def test_kafka_environment_is_what_the_settings_read(
    tf: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task definitions' Kafka variables are Settings fields, and valid together."""
    from infra.kafka import connection_kwargs
    from infra.settings import Settings

    env = tf.locals("compute")["common_environment"]
    kafka = {k: v for k, v in env.items() if k.startswith("PINKSEA_KAFKA_")}
    fields = {f"PINKSEA_{name.upper()}" for name in Settings.model_fields}
    assert set(kafka) <= fields
    assert kafka["PINKSEA_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert kafka["PINKSEA_KAFKA_SASL_MECHANISM"] == "OAUTHBEARER"
    for name, value in kafka.items():
        monkeypatch.setenv(name, value if "${" not in value else "b-1.msk:9098")
    monkeypatch.setenv("PINKSEA_KAFKA_AWS_REGION", REGION)
    s = Settings(_env_file=None)
    # as the MSK configuration's defaults (modules/data): topics survive one broker lost
    assert (s.kafka_replication_factor, s.kafka_min_insync_replicas) == (3, 2)
    assert connection_kwargs(s)["sasl_oauth_token_provider"].region == REGION
    assert env["PINKSEA_KAFKA_AWS_REGION"] == "${var.region}"
    properties = tf.resource("aws_msk_configuration", "main", "data").body["server_properties"]
    assert "default.replication.factor=3" in properties
    assert "min.insync.replicas=2" in properties


def test_fargate_services(tf: Config) -> None:
    services = tf.locals("compute")["services"]
    assert set(services) == {
        "api",
        "relay",
        "projections",
        "scheduler",
        "settler",
        "expiry",
        "notifier",
        "webhooks",
    }
    commands = {name: s["command"][:2] for name, s in services.items()}
    assert commands["api"] == ["pinksea", "api"]
    assert commands["relay"] == ["pinksea", "relay"]
    assert commands["projections"] == ["pinksea", "project"]
    assert commands["scheduler"] == ["pinksea", "scheduler"]
    assert commands["settler"] == ["pinksea", "settle"]
    assert commands["expiry"] == ["pinksea", "expire"]
    assert commands["notifier"] == ["pinksea", "notify"]
    assert commands["webhooks"] == ["pinksea", "webhooks"]
    # the lag publisher is a sidecar of the scheduler: it reads the queue depth on localhost
    lag = tf.locals("compute")["lag_metric_command"]
    assert lag[:2] == ["pinksea", "lag-metric"]
    assert lag[lag.index("--queue-metrics-url") + 1] == "http://127.0.0.1:9103/metrics"
    assert tf.locals("compute")["lag_metric_sidecar"]["command"] == "${local.lag_metric_command}"
    svc = tf.resource("aws_ecs_service", "service", "compute").body
    assert svc["launch_type"] == "FARGATE"
    assert block(svc, "network_configuration")["assign_public_ip"] is False
    td = tf.resource("aws_ecs_task_definition", "service", "compute").body
    assert td["requires_compatibilities"] == ["FARGATE"]


def test_gpu_tiers(tf: Config, tfvars: dict[str, dict[str, Any]]) -> None:
    expected = {
        "basic": "g4dn.xlarge",
        "high_performance": "g5.xlarge",
        "dedicated": "p4d.24xlarge",
    }
    for tiers in [default(tf, "gpu_tiers"), *(v["gpu_tiers"] for v in tfvars.values())]:
        assert {t: v["instance_type"] for t, v in tiers.items()} == expected
        for v in tiers.values():
            assert (v["min_size"], v["max_size"]) == (1, 10)
            assert isinstance(v["spot"], bool)
    asg = tf.resource("aws_autoscaling_group", "gpu", "compute").body
    assert asg["min_size"] == "${each.value.min_size}"
    assert asg["max_size"] == "${each.value.max_size}"
    assert asg["vpc_zone_identifier"] == "${var.private_subnet_ids}"


def _scaling(tf: Config, alarm: str, policy: str) -> tuple[dict[str, Any], dict[str, Any]]:
    a = tf.resource("aws_cloudwatch_metric_alarm", alarm, "compute").body
    p = tf.resource("aws_autoscaling_policy", policy, "compute").body
    assert a["alarm_actions"] == [f"${{aws_autoscaling_policy.{policy}[each.key].arn}}"]
    # GpuBacklog = consumer lag of the tier's dispatch topic + jobs queued for the tier
    assert a["metric_name"] == "GpuBacklog"
    assert a["namespace"] == "${local.lag_metric_namespace}"
    assert tf.locals("compute")["lag_metric_namespace"] == "Pinksea/Kafka"
    assert a["dimensions"] == {"Environment": "${var.environment}", "Tier": "${each.key}"}
    assert p["policy_type"] == "StepScaling"
    assert p["adjustment_type"] == "ChangeInCapacity"
    return a, p


def test_gpu_step_scaling_on_consumer_lag(tf: Config) -> None:
    a, p = _scaling(tf, "gpu_lag_over_10", "gpu_lag_scale_out_small")
    assert (a["comparison_operator"], a["threshold"]) == ("GreaterThanThreshold", 10)
    assert block(p, "step_adjustment")["scaling_adjustment"] == 1
    assert p["estimated_instance_warmup"] == 300  # 5-minute cooldown

    a, p = _scaling(tf, "gpu_lag_over_50", "gpu_lag_scale_out_large")
    assert (a["comparison_operator"], a["threshold"]) == ("GreaterThanThreshold", 50)
    assert block(p, "step_adjustment")["scaling_adjustment"] == 3
    assert p["estimated_instance_warmup"] == 180  # 3-minute cooldown

    a, p = _scaling(tf, "gpu_lag_under_3", "gpu_lag_scale_in")
    assert (a["comparison_operator"], a["threshold"]) == ("LessThanThreshold", 3)
    assert a["period"] * a["evaluation_periods"] == 600  # 10 minutes
    assert a["datapoints_to_alarm"] == a["evaluation_periods"]
    assert a["treat_missing_data"] == "notBreaching"
    assert block(p, "step_adjustment")["scaling_adjustment"] == -1


# ----------------------------------------------------------------------------------------------
# Alarms
# ----------------------------------------------------------------------------------------------


def _alarm(tf: Config, name: str) -> dict[str, Any]:
    return tf.resource("aws_cloudwatch_metric_alarm", name, "observability").body


def _window(alarm: dict[str, Any]) -> int:
    if "period" in alarm:
        return int(alarm["period"]) * int(alarm["evaluation_periods"])
    periods = {q["metric"][0]["period"] for q in alarm["metric_query"] if "metric" in q}
    assert len(periods) == 1
    return int(periods.pop()) * int(alarm["evaluation_periods"])


def test_alarm_table(tf: Config) -> None:
    rate = _alarm(tf, "api_5xx_rate")
    expr = next(q["expression"] for q in rate["metric_query"] if q.get("return_data"))
    assert "100 *" in expr and "HTTPCode_Target_5XX_Count" in str(rate["metric_query"])
    assert (rate["threshold"], _window(rate)) == (5, 300)

    p99 = _alarm(tf, "api_latency_p99")
    assert (p99["extended_statistic"], p99["threshold"]) == ("p99", 5)
    assert p99["metric_name"] == "TargetResponseTime"

    lag = _alarm(tf, "consumer_lag")
    assert (lag["metric_name"], lag["threshold"]) == ("MaxConsumerLag", 100)
    assert lag["treat_missing_data"] == "breaching"

    cpu = _alarm(tf, "rds_cpu")
    assert (cpu["metric_name"], cpu["threshold"], _window(cpu)) == ("CPUUtilization", 80, 600)

    conns = _alarm(tf, "rds_connections")
    assert conns["metric_name"] == "DatabaseConnections"
    assert conns["threshold"] == "${floor(var.db_max_connections * local.rds_connections_ratio)}"
    assert tf.locals("observability")["rds_connections_ratio"] == 0.8

    free = _alarm(tf, "rds_free_storage")
    assert (free["metric_name"], free["statistic"], _window(free)) == (
        "FreeStorageSpace",
        "Minimum",
        300,
    )
    assert free["threshold"] == "${local.rds_free_storage_bytes_min}"
    assert free["comparison_operator"] == "LessThanThreshold"
    assert free["alarm_actions"] == ["${aws_sns_topic.alarms.arn}"]

    redis = _alarm(tf, "redis_memory")
    assert (redis["metric_name"], redis["threshold"]) == ("DatabaseMemoryUsagePercentage", 80)

    s3 = _alarm(tf, "s3_error_rate")
    assert s3["threshold"] == 1
    metrics = {q["metric"][0]["metric_name"] for q in s3["metric_query"] if "metric" in q}
    assert metrics == {"4xxErrors", "5xxErrors", "AllRequests"}

    for body in (rate, p99, lag, cpu, conns, redis, s3):
        assert body["comparison_operator"] == "GreaterThanThreshold"
        assert body["alarm_actions"] == ["${aws_sns_topic.alarms.arn}"]


# ----------------------------------------------------------------------------------------------
# Tags
# ----------------------------------------------------------------------------------------------

# Resource types whose AWS API takes no tags (everything else must be tagged).
UNTAGGABLE = {
    "aws_route",
    "aws_route_table_association",
    "aws_iam_role_policy",
    "aws_iam_role_policy_attachment",
    "aws_kms_alias",
    "aws_s3_bucket_public_access_block",
    "aws_s3_bucket_ownership_controls",
    "aws_s3_bucket_versioning",
    "aws_s3_bucket_server_side_encryption_configuration",
    "aws_s3_bucket_lifecycle_configuration",
    "aws_s3_bucket_logging",
    "aws_s3_bucket_metric",
    "aws_s3_bucket_policy",
    "aws_secretsmanager_secret_version",
    "aws_msk_configuration",
    "aws_efs_backup_policy",
    "aws_efs_mount_target",
    "aws_efs_file_system_policy",
    "aws_route53_record",
    "aws_acm_certificate_validation",
    "aws_wafv2_web_acl_association",
    "aws_wafv2_web_acl_logging_configuration",
    "aws_cloudfront_public_key",
    "aws_cloudfront_key_group",
    "aws_cloudfront_origin_access_control",
    "aws_cloudfront_response_headers_policy",
    "aws_cloudfront_function",
    "aws_ecr_lifecycle_policy",
    "aws_ecs_cluster_capacity_providers",
    "aws_appautoscaling_policy",
    "aws_autoscaling_policy",
    "aws_cognito_user_group",
    "aws_cognito_user_pool_domain",
    "aws_cognito_user_pool_client",
    "aws_sns_topic_subscription",
    "random_password",
}


def test_every_taggable_resource_is_tagged(tf: Config) -> None:
    resources = tf.resources()
    assert len(resources) > 100
    untagged = []
    for r in resources:
        if r.type in UNTAGGABLE:
            continue
        if r.type == "aws_autoscaling_group":
            tags = [d["tag"] for d in r.body.get("dynamic", []) if "tag" in d]
            ok = bool(tags) and "var.tags" in tags[0]["for_each"]
            ok = ok and tags[0]["content"][0]["propagate_at_launch"] is True
        else:
            ok = "var.tags" in str(r.body.get("tags", ""))
        if not ok:
            untagged.append(r.address)
    assert untagged == []


def test_default_tags_on_every_provider(tf: Config) -> None:
    providers = [body for name, body, _ in tf.blocks("provider", "root") if name == "aws"]
    assert providers
    for p in providers:
        assert block(p, "default_tags")["tags"] == "${local.tags}"
    tags = tf.locals("root")["tags"]
    for key in ("Project", "Environment", "ManagedBy"):
        assert key in tags
    # every module gets the same explicit tags
    for name, call in tf.module_calls().items():
        assert call["tags"] == "${local.tags}", name


# ----------------------------------------------------------------------------------------------
# What `tofu validate` would check, as far as it goes without the provider schema
# ----------------------------------------------------------------------------------------------


def _code(path: Path) -> str:
    """The file without comment lines and trailing comments."""
    lines = []
    for line in path.read_text().splitlines():
        if line.lstrip().startswith(("#", "//")):
            continue
        lines.append(re.sub(r"\s{2,}#\s.*$", "", line))
    return "\n".join(lines)


def test_module_arguments_match_module_variables(tf: Config) -> None:
    meta = {"source", "providers", "depends_on", "count", "for_each"}
    for name, call in tf.module_calls().items():
        module = call["source"].removeprefix("./modules/")
        variables = tf.variables(module)
        args = set(call) - meta
        assert args <= set(variables), f"{name}: unknown arguments {args - set(variables)}"
        required = {v for v, body in variables.items() if "default" not in body}
        assert required <= args, f"{name}: missing arguments {required - args}"


def test_module_output_references_exist(tf: Config) -> None:
    calls = tf.module_calls()
    for path in tf.files:
        if tf.module_of(path) != "root":
            continue
        for mod, out in re.findall(r"\bmodule\.([a-z_]+)\.([a-z_0-9]+)", _code(path)):
            assert mod in calls, f"{path.name}: module.{mod} is not declared"
            module = calls[mod]["source"].removeprefix("./modules/")
            assert out in tf.outputs(module), f"{path.name}: module.{mod}.{out} is not an output"


@pytest.mark.parametrize(
    "module",
    ["root", "network", "security", "data", "storage", "compute", "identity", "observability"],
)
def test_references_resolve(tf: Config, module: str) -> None:
    paths = [p for p in tf.files if tf.module_of(p) == module]
    code = "\n".join(_code(p) for p in paths)
    declared_vars = set(tf.variables(module))
    used_vars = set(re.findall(r"\bvar\.([a-z_0-9]+)", code))
    assert used_vars <= declared_vars, f"undeclared variables {used_vars - declared_vars}"
    assert declared_vars <= used_vars, f"unused variables {declared_vars - used_vars}"
    declared_locals = set(tf.locals(module))
    used_locals = set(re.findall(r"\blocal\.([a-z_0-9]+)", code))
    assert used_locals <= declared_locals, f"undeclared locals {used_locals - declared_locals}"
    resources = {(r.type, r.name) for r in tf.resources(module=module)}
    for rtype, name in re.findall(r"(?<![.\w])((?:aws|random)_[a-z0-9_]+)\.([a-z0-9_]+)", code):
        assert (rtype, name) in resources, f"{rtype}.{name} is not declared in {module}"
    data = {(t, n) for t, named, _ in tf.blocks("data", module) for n in named}
    for rtype, name in re.findall(r"(?<![\w./-])data\.([a-z0-9_]+)\.([a-z0-9_]+)", code):
        assert (rtype, name) in data, f"data.{rtype}.{name} is not declared in {module}"


def test_every_variable_and_output_is_described(tf: Config) -> None:
    for module in tf.modules():
        for kind in ("variable", "output"):
            for name, body, path in tf.blocks(kind, module):
                assert body.get("description"), f"{path}: {kind} {name} has no description"


def test_checkov_skips_are_justified() -> None:
    skips = []
    for path in [*TERRAFORM.rglob("*.tf"), *(TERRAFORM.parent / "docker").glob("Dockerfile*")]:
        for line in path.read_text().splitlines():
            if "checkov:skip=" in line:
                skips.append((path.name, line.strip()))
    assert skips
    for name, line in skips:
        m = re.search(r"checkov:skip=(CKV2?_[A-Z]+_\d+):(.+)$", line)
        assert m, f"{name}: malformed skip {line!r}"
        assert len(m.group(2).strip()) >= 30, f"{name}: skip without a real reason: {line!r}"


def test_resource_names_fit_aws_limits(tf: Config) -> None:
    # ALB and target group names are at most 32 characters: "<project>-<environment>-api"
    longest = "pinksea-production"
    for rtype in ("aws_lb", "aws_lb_target_group"):
        for r in tf.resources(rtype):
            assert len(r.body["name"].replace("${var.name}", longest)) <= 32, r.address


def _resources_named(resources: list[Resource]) -> set[str]:
    return {r.name for r in resources}


def test_identity_has_one_role_per_service(tf: Config) -> None:
    secrets = tf.locals("identity")["service_secrets"]
    policies = tf.locals("identity")["task_policies"]
    services = set(tf.locals("compute")["services"]) | {"model-sync"}
    assert "lag-metric" not in services
    assert set(secrets) == set(policies) == services
    # the API is the only service that reads the Stripe and URL-signing secrets
    for service, refs in secrets.items():
        joined = " ".join(refs)
        assert ("stripe" in joined) == (service == "api"), service
    assert _resources_named(tf.resources("aws_iam_role", "identity")) == {
        "execution",
        "task",
        "gpu",
        "github_deploy",  # the release pipeline's (GitHub OIDC), not a service's
    }
