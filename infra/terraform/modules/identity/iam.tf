# Least privilege per service: one ECS execution role (pull its image, write its logs, read
# only the secrets it is given) and one task role (what the process itself may touch) per
# service, one instance role per GPU tier. Kafka access is MSK IAM: each role names the
# exact topics it reads or writes and the consumer groups it may join.

data "aws_caller_identity" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id

  # arn:aws:kafka:<region>:<account>:cluster/<name>/<uuid> -> topic/... and group/...
  msk_topic_arn = replace(var.msk_cluster_arn, ":cluster/", ":topic/")
  msk_group_arn = replace(var.msk_cluster_arn, ":cluster/", ":group/")

  domain_topics   = ["pinksea.credits.v1", "pinksea.subscriptions.v1", "pinksea.jobs.v1"]
  all_tiers       = ["basic", "high_performance", "dedicated"]
  dispatch_topics = [for t in local.all_tiers : "pinksea.gpu.dispatch.${t}.v1"]
  reports_topic   = "pinksea.gpu.reports.v1"
  dlq_topic       = "pinksea.gpu.dlq.v1"

  # service => secrets its containers receive (see modules/compute)
  service_secrets = {
    api         = [var.database_secret_arn, var.redis_secret_arn, aws_secretsmanager_secret.stripe.arn, aws_secretsmanager_secret.cloudfront_signing.arn, aws_secretsmanager_secret.personal_data.arn]
    relay       = [var.database_secret_arn]
    projections = [var.database_secret_arn, var.redis_secret_arn]
    scheduler   = [var.database_secret_arn, var.redis_secret_arn, aws_secretsmanager_secret.personal_data.arn]
    settler     = [var.database_secret_arn]
    expiry      = [var.database_secret_arn]
    notifier    = [var.database_secret_arn]
    webhooks    = [var.database_secret_arn]
    model-sync  = []
  }

  task_policies = {
    api         = data.aws_iam_policy_document.api.json
    relay       = data.aws_iam_policy_document.relay.json
    projections = data.aws_iam_policy_document.projections.json
    scheduler   = data.aws_iam_policy_document.scheduler.json
    settler     = data.aws_iam_policy_document.settler.json
    expiry      = data.aws_iam_policy_document.ecs_exec.json
    notifier    = data.aws_iam_policy_document.notifier.json
    webhooks    = data.aws_iam_policy_document.webhooks.json
    model-sync  = data.aws_iam_policy_document.model_sync.json
  }
}

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

# ============================================================================================
# Execution roles
# ============================================================================================

data "aws_iam_policy_document" "execution" {
  for_each = local.service_secrets

  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # GetAuthorizationToken has no resource-level permissions
  }

  statement {
    sid = "PullTheAppImage"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = [var.ecr_repository_arns["app"]]
  }

  statement {
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["arn:aws:logs:${var.region}:${local.account_id}:log-group:${var.log_group_name_base}/ecs/${each.key}:*"]
  }

  dynamic "statement" {
    for_each = length(each.value) > 0 ? [1] : []

    content {
      sid       = "ReadOwnSecrets"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = each.value
    }
  }

  dynamic "statement" {
    for_each = length(each.value) > 0 ? [1] : []

    content {
      sid       = "DecryptOwnSecrets"
      actions   = ["kms:Decrypt"]
      resources = [var.kms_key_arn]

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["secretsmanager.${var.region}.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role" "execution" {
  for_each = local.service_secrets

  name               = "${var.name}-${each.key}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json

  tags = var.tags
}

resource "aws_iam_role_policy" "execution" {
  for_each = local.service_secrets

  name   = "pull-log-secrets"
  role   = aws_iam_role.execution[each.key].id
  policy = data.aws_iam_policy_document.execution[each.key].json
}

# ============================================================================================
# Task roles
# ============================================================================================

# ECS Exec (`aws ecs execute-command`) for debugging: the ssmmessages channel actions have
# no resource-level permissions.
data "aws_iam_policy_document" "ecs_exec" {
  # checkov:skip=CKV_AWS_356:ssmmessages:* channel actions support no resource ARNs (AWS service authorization reference).
  # checkov:skip=CKV_AWS_111:ssmmessages:* channel actions support no resource ARNs (AWS service authorization reference).
  statement {
    sid = "EcsExecChannel"
    actions = [
      "ssmmessages:CreateControlChannel",
      "ssmmessages:CreateDataChannel",
      "ssmmessages:OpenControlChannel",
      "ssmmessages:OpenDataChannel",
    ]
    resources = ["*"]
  }

  statement {
    sid       = "EcsExecSessionKey"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]
  }
}

data "aws_iam_policy_document" "api" {
  source_policy_documents = [data.aws_iam_policy_document.ecs_exec.json]

  statement {
    sid       = "UserImages"
    actions   = ["s3:GetObject", "s3:DeleteObject"]
    resources = ["${var.images_bucket_arn}/users/*"]
  }

  # Users' uploads (POST /v1/uploads): the presigned POST is signed with this role, so the
  # upload is allowed only if the role may put the object itself.
  statement {
    sid       = "UserUploads"
    actions   = ["s3:PutObject"]
    resources = ["${var.images_bucket_arn}/users/*/uploads/*"]
  }

  # Users' LoRAs (POST /v1/models/mine): the presigned POST is signed with this role, so it
  # needs PutObject; completion reads the file back, a rejection or a deletion removes it.
  statement {
    sid       = "UserModels"
    actions   = ["s3:PutObject", "s3:GetObject", "s3:DeleteObject"]
    resources = ["${var.images_bucket_arn}/models/users/*"]
  }

  # The system style presets (GET /v1/presets), written by `pinksea presets sync`.
  statement {
    sid       = "ReadStylePresets"
    actions   = ["s3:GetObject"]
    resources = ["${var.images_bucket_arn}/system/style_presets/*"]
  }

  statement {
    sid       = "UserImagesKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "relay" {
  source_policy_documents = [data.aws_iam_policy_document.ecs_exec.json]

  statement {
    sid       = "KafkaConnectIdempotentProducer"
    actions   = ["kafka-cluster:Connect", "kafka-cluster:DescribeCluster", "kafka-cluster:WriteDataIdempotently"]
    resources = [var.msk_cluster_arn]
  }

  statement {
    sid       = "KafkaWriteDomainTopics"
    actions   = ["kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"]
    resources = [for t in local.domain_topics : "${local.msk_topic_arn}/${t}"]
  }

  # `pinksea kafka init` runs in the relay task (docs/DEPLOY.md): it creates every topic.
  statement {
    sid       = "KafkaCreateTopics"
    actions   = ["kafka-cluster:DescribeTopic", "kafka-cluster:CreateTopic"]
    resources = ["${local.msk_topic_arn}/pinksea.*"]
  }
}

data "aws_iam_policy_document" "projections" {
  source_policy_documents = [data.aws_iam_policy_document.ecs_exec.json]

  statement {
    sid       = "KafkaConnect"
    actions   = ["kafka-cluster:Connect", "kafka-cluster:DescribeCluster"]
    resources = [var.msk_cluster_arn]
  }

  statement {
    sid       = "KafkaReadDomainTopics"
    actions   = ["kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"]
    resources = [for t in local.domain_topics : "${local.msk_topic_arn}/${t}"]
  }

  statement {
    sid       = "KafkaOwnGroups"
    actions   = ["kafka-cluster:DescribeGroup", "kafka-cluster:AlterGroup"]
    resources = ["${local.msk_group_arn}/pinksea.projection.*"]
  }
}

data "aws_iam_policy_document" "scheduler" {
  # checkov:skip=CKV_AWS_356:cloudwatch:PutMetricData (lag-metric sidecar) supports no resource ARNs; it is limited to one namespace by condition.
  source_policy_documents = [data.aws_iam_policy_document.ecs_exec.json]

  statement {
    sid       = "KafkaConnectIdempotentProducer"
    actions   = ["kafka-cluster:Connect", "kafka-cluster:DescribeCluster", "kafka-cluster:WriteDataIdempotently"]
    resources = [var.msk_cluster_arn]
  }

  statement {
    sid       = "KafkaReadJobsAndReports"
    actions   = ["kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"]
    resources = ["${local.msk_topic_arn}/pinksea.jobs.v1", "${local.msk_topic_arn}/${local.reports_topic}"]
  }

  statement {
    sid       = "KafkaWriteDispatchAndDeadLetters"
    actions   = ["kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"]
    resources = [for t in concat(local.dispatch_topics, [local.dlq_topic]) : "${local.msk_topic_arn}/${t}"]
  }

  # The lag-metric sidecar: offsets of every pinksea group, one CloudWatch namespace.
  statement {
    sid       = "LagMetricDescribeTopicsAndGroups"
    actions   = ["kafka-cluster:DescribeTopic", "kafka-cluster:DescribeGroup"]
    resources = ["${local.msk_topic_arn}/pinksea.*", "${local.msk_group_arn}/pinksea.*"]
  }

  statement {
    sid       = "LagMetricPublish"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]

    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = [var.metric_namespace]
    }
  }
}

data "aws_iam_policy_document" "settler" {
  source_policy_documents = [data.aws_iam_policy_document.ecs_exec.json]

  statement {
    sid       = "KafkaConnect"
    actions   = ["kafka-cluster:Connect", "kafka-cluster:DescribeCluster", "kafka-cluster:WriteDataIdempotently"]
    resources = [var.msk_cluster_arn]
  }

  statement {
    sid       = "KafkaReadReports"
    actions   = ["kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"]
    resources = ["${local.msk_topic_arn}/${local.reports_topic}"]
  }

  statement {
    sid       = "KafkaWriteDeadLetters"
    actions   = ["kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"]
    resources = ["${local.msk_topic_arn}/${local.dlq_topic}"]
  }

  statement {
    sid       = "KafkaOwnGroups"
    actions   = ["kafka-cluster:DescribeGroup", "kafka-cluster:AlterGroup"]
    resources = ["${local.msk_group_arn}/pinksea.settler"]
  }
}

# `pinksea notify`: reads the credits topic in its own group and sends through SES, only from
# the domain's no-reply address (out of the SES sandbox, only the sender's identity is checked).
data "aws_iam_policy_document" "notifier" {
  source_policy_documents = [data.aws_iam_policy_document.ecs_exec.json]

  statement {
    sid       = "KafkaConnect"
    actions   = ["kafka-cluster:Connect", "kafka-cluster:DescribeCluster"]
    resources = [var.msk_cluster_arn]
  }

  statement {
    sid       = "KafkaReadCredits"
    actions   = ["kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"]
    resources = ["${local.msk_topic_arn}/pinksea.credits.v1"]
  }

  statement {
    sid       = "KafkaOwnGroup"
    actions   = ["kafka-cluster:DescribeGroup", "kafka-cluster:AlterGroup"]
    resources = ["${local.msk_group_arn}/pinksea.notifier"]
  }

  statement {
    sid       = "SendFromTheDomain"
    actions   = ["ses:SendEmail", "ses:SendRawEmail"] # SES v2 SendEmail with raw content
    resources = ["arn:aws:ses:${var.region}:${local.account_id}:identity/${var.domain_name}"]

    condition {
      test     = "StringEquals"
      variable = "ses:FromAddress"
      values   = ["no-reply@${var.domain_name}"]
    }
  }
}

# `pinksea webhooks`: reads the jobs and credits topics in its own group; its deliveries go to
# users' public https endpoints, which need no AWS permission.
data "aws_iam_policy_document" "webhooks" {
  source_policy_documents = [data.aws_iam_policy_document.ecs_exec.json]

  statement {
    sid       = "KafkaConnect"
    actions   = ["kafka-cluster:Connect", "kafka-cluster:DescribeCluster"]
    resources = [var.msk_cluster_arn]
  }

  statement {
    sid     = "KafkaReadJobsAndCredits"
    actions = ["kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"]
    resources = [
      "${local.msk_topic_arn}/pinksea.jobs.v1",
      "${local.msk_topic_arn}/pinksea.credits.v1",
    ]
  }

  statement {
    sid       = "KafkaOwnGroup"
    actions   = ["kafka-cluster:DescribeGroup", "kafka-cluster:AlterGroup"]
    resources = ["${local.msk_group_arn}/pinksea.webhooks"]
  }
}

data "aws_iam_policy_document" "model_sync" {
  source_policy_documents = [data.aws_iam_policy_document.ecs_exec.json]

  statement {
    sid       = "ListModels"
    actions   = ["s3:ListBucket"]
    resources = [var.models_bucket_arn]
  }

  statement {
    sid       = "ReadModels"
    actions   = ["s3:GetObject"]
    resources = ["${var.models_bucket_arn}/*"]
  }

  statement {
    sid       = "ModelsKey"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]
  }

  statement {
    sid       = "WriteModelStore"
    actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    resources = [var.efs_file_system_arn]

    condition {
      test     = "StringEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [var.efs_access_point_arn]
    }
  }
}

resource "aws_iam_role" "task" {
  for_each = local.task_policies

  name               = "${var.name}-${each.key}-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json

  tags = var.tags
}

resource "aws_iam_role_policy" "task" {
  for_each = local.task_policies

  name   = "${each.key}-least-privilege"
  role   = aws_iam_role.task[each.key].id
  policy = each.value
}

# ============================================================================================
# GPU worker instance roles (one per tier)
# ============================================================================================

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "gpu" {
  for_each = toset(var.gpu_tiers)

  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # no resource-level permissions
  }

  statement {
    sid = "PullTheGpuWorkerImage"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = [var.ecr_repository_arns["gpu-worker"]]
  }

  statement {
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["arn:aws:logs:${var.region}:${local.account_id}:log-group:${var.log_group_name_base}/gpu/${each.key}:*"]
  }

  statement {
    sid       = "ReadRedisSecret"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [var.redis_secret_arn]
  }

  statement {
    sid       = "MountModelsReadOnly"
    actions   = ["elasticfilesystem:ClientMount"]
    resources = [var.efs_file_system_arn]

    condition {
      test     = "StringEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [var.efs_access_point_arn]
    }
  }

  statement {
    sid       = "UploadUserImages"
    actions   = ["s3:PutObject"]
    resources = ["${var.images_bucket_arn}/users/*"]
  }

  # A job's input images (init image, mask: an upload or one of the user's images), read under
  # the job's own user (gpu_consumer/inputs.py); an upload's extension is found by a listing.
  statement {
    sid       = "ReadUserImages"
    actions   = ["s3:GetObject"]
    resources = ["${var.images_bucket_arn}/users/*"]
  }

  statement {
    sid       = "ListUserUploads"
    actions   = ["s3:ListBucket"]
    resources = [var.images_bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["users/*/uploads/*"]
    }
  }

  # A job's LoRAs, read under the job's own user (gpu_consumer/loras.py builds the key).
  statement {
    sid       = "ReadUserModels"
    actions   = ["s3:GetObject"]
    resources = ["${var.images_bucket_arn}/models/users/*"]
  }

  statement {
    sid       = "ListModelsBucket"
    actions   = ["s3:ListBucket"]
    resources = [var.models_bucket_arn]
  }

  statement {
    sid       = "ReadModelsBucket"
    actions   = ["s3:GetObject"]
    resources = ["${var.models_bucket_arn}/*"]
  }

  statement {
    sid       = "DataKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }

  statement {
    sid       = "KafkaConnectIdempotentProducer"
    actions   = ["kafka-cluster:Connect", "kafka-cluster:DescribeCluster", "kafka-cluster:WriteDataIdempotently"]
    resources = [var.msk_cluster_arn]
  }

  statement {
    sid       = "KafkaReadOwnDispatchTopic"
    actions   = ["kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"]
    resources = ["${local.msk_topic_arn}/pinksea.gpu.dispatch.${each.key}.v1"]
  }

  statement {
    sid       = "KafkaWriteReportsAndDeadLetters"
    actions   = ["kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"]
    resources = ["${local.msk_topic_arn}/${local.reports_topic}", "${local.msk_topic_arn}/${local.dlq_topic}"]
  }

  statement {
    sid       = "KafkaOwnGroup"
    actions   = ["kafka-cluster:DescribeGroup", "kafka-cluster:AlterGroup"]
    resources = ["${local.msk_group_arn}/pinksea.gpu.worker.*"] # one group per worker
  }
}

resource "aws_iam_role" "gpu" {
  for_each = toset(var.gpu_tiers)

  name               = "${var.name}-gpu-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json

  tags = var.tags
}

resource "aws_iam_role_policy" "gpu" {
  for_each = toset(var.gpu_tiers)

  name   = "gpu-worker-least-privilege"
  role   = aws_iam_role.gpu[each.key].id
  policy = data.aws_iam_policy_document.gpu[each.key].json
}

# Session Manager instead of SSH: no inbound port on the GPU workers.
resource "aws_iam_role_policy_attachment" "gpu_ssm" {
  for_each = toset(var.gpu_tiers)

  role       = aws_iam_role.gpu[each.key].name
  policy_arn = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "gpu" {
  for_each = toset(var.gpu_tiers)

  name = "${var.name}-gpu-${each.key}"
  role = aws_iam_role.gpu[each.key].name

  tags = var.tags
}
