# Container registry, the ECS cluster, and the Fargate services: the API behind the ALB and
# the pipeline processes (relay, projections, scheduler, settler, expiry, notifier). The
# consumer-lag publisher runs as a sidecar of the scheduler: it reads the scheduler's queue depth
# on 127.0.0.1:9103/metrics and publishes the GPU backlog the auto-scaling groups scale on.

locals {
  lag_metric_namespace = "Pinksea/Kafka"
  log_group_name_base  = "/${var.name}"

  repositories = {
    app        = "${var.name}/pinksea"
    gpu-worker = "${var.name}/gpu-worker"
  }

  app_image = "${aws_ecr_repository.this["app"].repository_url}:${var.image_tag}"
  gpu_image = "${aws_ecr_repository.this["gpu-worker"].repository_url}:${var.image_tag}"

  # Settings shared by every process (infra/settings.py reads PINKSEA_*).
  common_environment = {
    PINKSEA_ENVIRONMENT               = var.environment
    PINKSEA_KAFKA_BOOTSTRAP_SERVERS   = var.msk_bootstrap_brokers
    PINKSEA_KAFKA_SECURITY_PROTOCOL   = "SASL_SSL"
    PINKSEA_KAFKA_SASL_MECHANISM      = "OAUTHBEARER" # MSK IAM: aws-msk-iam-sasl-signer token
    PINKSEA_KAFKA_AWS_REGION          = var.region    # the GPU hosts' docker run sets no AWS_REGION
    PINKSEA_KAFKA_REPLICATION_FACTOR  = "3"           # `pinksea kafka init`: as the MSK defaults
    PINKSEA_KAFKA_MIN_INSYNC_REPLICAS = "2"
    PINKSEA_S3_ENDPOINT_URL           = "" # AWS's own endpoints
    PINKSEA_S3_REGION                 = var.region
    PINKSEA_S3_BUCKET                 = var.images_bucket_name
    PINKSEA_S3_ACCESS_KEY_ID          = "" # empty: the task role's credentials
    PINKSEA_CLOUDWATCH_ENDPOINT_URL   = "" # empty: AWS's own (`pinksea lag-metric`)
    PINKSEA_STRIPE_API_BASE           = "" # empty: api.stripe.com
    PINKSEA_LOG_JSON                  = "true"
    PINKSEA_LOG_LEVEL                 = "INFO"
  }

  # secret name => "<secret arn>:<json key>::"
  secret_refs = {
    database       = "${var.database_secret_arn}:url::"
    redis          = "${var.redis_secret_arn}:url::"
    stripe_key     = "${var.stripe_secret_arn}:api_key::"
    stripe_webhook = "${var.stripe_secret_arn}:webhook_secret::"
    cdn_signer     = "${var.cloudfront_signing_secret}:private_key::"
    personal_data  = "${var.personal_data_secret_arn}:kek::"
  }
  secret_env = {
    database       = "PINKSEA_DATABASE_URL"
    redis          = "PINKSEA_REDIS_URL"
    stripe_key     = "PINKSEA_STRIPE_API_KEY"
    stripe_webhook = "PINKSEA_STRIPE_WEBHOOK_SECRET"
    cdn_signer     = "PINKSEA_CLOUDFRONT_PRIVATE_KEY"
    personal_data  = "PINKSEA_PERSONAL_DATA_KEK"
  }

  # The sidecar of the scheduler task (cli/processes.py, infra/aws_lag_metric.py).
  lag_metric_command = [
    "pinksea", "lag-metric",
    "--namespace", local.lag_metric_namespace,
    "--environment", var.environment,
    "--interval", "60",
    "--queue-metrics-url", "http://127.0.0.1:9103/metrics",
  ]

  lag_metric_sidecar = {
    name                   = "lag-metric"
    image                  = local.app_image
    command                = local.lag_metric_command
    essential              = false # the scheduler keeps running; a silent metric pages (consumer-lag)
    readonlyRootFilesystem = true
    user                   = "10001:10001"
    environment            = [for k, v in local.common_environment : { name = k, value = v }]
    mountPoints            = [{ sourceVolume = "tmp", containerPath = "/tmp", readOnly = false }]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.service["scheduler"].name
        awslogs-region        = var.region
        awslogs-stream-prefix = "lag-metric"
      }
    }
  }

  # Every Fargate service: its command, the secrets it may read, and its size.
  # The relay and the settler must run exactly once (one writer per position); the others
  # are single consumers of their groups at this scale.
  services = {
    api = {
      # /metrics on 9100, a port the load balancer does not forward (127.0.0.1 only).
      command = ["pinksea", "api", "--host", "0.0.0.0", "--port", "8080", "--metrics-port", "9100"]
      secrets = ["database", "redis", "stripe_key", "stripe_webhook", "cdn_signer", "personal_data"]
      cpu     = var.api_cpu
      memory  = var.api_memory
      # What the API refuses to start without outside local (Settings.deployment_problems).
      extra_environment = {
        PINKSEA_JWT_ISSUER             = var.cognito_issuer
        PINKSEA_JWT_AUDIENCE           = var.cognito_client_id
        PINKSEA_CDN_DOMAIN             = var.cdn_domain_name
        PINKSEA_CLOUDFRONT_KEY_PAIR_ID = var.cloudfront_public_key_id
        PINKSEA_STRIPE_PRICE_IDS       = jsonencode(var.stripe_price_ids)
        PINKSEA_CHECKOUT_SUCCESS_URL   = "https://${var.cdn_domain_name}/billing/success"
        PINKSEA_CHECKOUT_CANCEL_URL    = "https://${var.cdn_domain_name}/billing"
        # Abuse limits behind the load balancer: the client is the address the ALB appends to
        # X-Forwarded-For (only its subnets are trusted); no /docs or /openapi.json.
        PINKSEA_FORWARDED_ALLOW_IPS = var.alb_subnet_cidrs
        PINKSEA_API_DOCS_ENABLED    = "false"
      }
    }
    relay = {
      command           = ["pinksea", "relay"]
      secrets           = ["database"]
      cpu               = var.pipeline_cpu
      memory            = var.pipeline_memory
      extra_environment = {}
    }
    projections = {
      command           = ["pinksea", "project"]
      secrets           = ["database", "redis"]
      cpu               = var.pipeline_cpu
      memory            = var.pipeline_memory
      extra_environment = {}
    }
    scheduler = {
      command           = ["pinksea", "scheduler"]
      secrets           = ["database", "redis", "personal_data"]
      cpu               = var.pipeline_cpu
      memory            = var.pipeline_memory
      extra_environment = {}
    }
    settler = {
      command           = ["pinksea", "settle"]
      secrets           = ["database"]
      cpu               = var.pipeline_cpu
      memory            = var.pipeline_memory
      extra_environment = {}
    }
    expiry = {
      command           = ["pinksea", "expire"]
      secrets           = ["database"]
      cpu               = var.pipeline_cpu
      memory            = var.pipeline_memory
      extra_environment = {}
    }
    # Completion webhooks to users' https endpoints (public addresses only: the SSRF rules of
    # workflows/webhooks/urls.py; PINKSEA_WEBHOOKS_ALLOW_LOOPBACK is refused outside local).
    webhooks = {
      command           = ["pinksea", "webhooks"]
      secrets           = ["database"]
      cpu               = var.pipeline_cpu
      memory            = var.pipeline_memory
      extra_environment = {}
    }
    # Low-balance e-mails through SES (AWS's own endpoint), from the domain's no-reply address
    # (a verified identity); they link to the billing page.
    notifier = {
      command = ["pinksea", "notify"]
      secrets = ["database"]
      cpu     = var.pipeline_cpu
      memory  = var.pipeline_memory
      extra_environment = {
        PINKSEA_EMAIL_BACKEND       = "ses"
        PINKSEA_EMAIL_SENDER        = "Pinksea <no-reply@${var.cdn_domain_name}>"
        PINKSEA_SES_REGION          = var.region
        PINKSEA_SES_ENDPOINT_URL    = ""
        PINKSEA_CHECKOUT_CANCEL_URL = "https://${var.cdn_domain_name}/billing"
      }
    }
  }
}

# --- ECR ------------------------------------------------------------------------------------

resource "aws_ecr_repository" "this" {
  for_each = local.repositories

  name                 = each.value
  image_tag_mutability = "IMMUTABLE"

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = var.kms_key_arn
  }

  tags = var.tags
}

resource "aws_ecr_lifecycle_policy" "this" {
  for_each = aws_ecr_repository.this

  repository = each.value.name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "Keep the last 10 releases"
      selection = {
        tagStatus   = "any"
        countType   = "imageCountMoreThan"
        countNumber = 10
      }
      action = { type = "expire" }
    }]
  })
}

# --- ECS cluster ----------------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "ecs_exec" {
  name              = "${local.log_group_name_base}/ecs/exec"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn

  tags = var.tags
}

resource "aws_ecs_cluster" "main" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }

  configuration {
    execute_command_configuration {
      kms_key_id = var.kms_key_arn
      logging    = "OVERRIDE"

      log_configuration {
        cloud_watch_encryption_enabled = true
        cloud_watch_log_group_name     = aws_cloudwatch_log_group.ecs_exec.name
      }
    }
  }

  tags = var.tags
}

resource "aws_ecs_cluster_capacity_providers" "main" {
  cluster_name       = aws_ecs_cluster.main.name
  capacity_providers = ["FARGATE", "FARGATE_SPOT"]

  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
  }
}

resource "aws_cloudwatch_log_group" "service" {
  for_each = local.services

  name              = "${local.log_group_name_base}/ecs/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn

  tags = var.tags
}

resource "aws_ecs_task_definition" "service" {
  for_each = local.services

  family                   = "${var.name}-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = each.value.cpu
  memory                   = each.value.memory
  execution_role_arn       = var.execution_role_arns[each.key]
  task_role_arn            = var.task_role_arns[each.key]

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  # The root filesystem is read-only; /tmp is the one writable path.
  volume {
    name = "tmp"
  }

  container_definitions = jsonencode(concat([{
    name                   = each.key
    image                  = local.app_image
    command                = each.value.command
    essential              = true
    readonlyRootFilesystem = true
    user                   = "10001:10001"
    stopTimeout            = 60

    environment = [
      for k, v in merge(local.common_environment, each.value.extra_environment) : { name = k, value = v }
    ]
    secrets = [
      for s in each.value.secrets : { name = local.secret_env[s], valueFrom = local.secret_refs[s] }
    ]

    portMappings = each.key == "api" ? [{ containerPort = 8080, protocol = "tcp" }] : []

    healthCheck = each.key == "api" ? {
      command     = ["CMD", "python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/healthz', timeout=3)"]
      interval    = 15
      timeout     = 5
      retries     = 3
      startPeriod = 30
    } : null

    mountPoints = [{ sourceVolume = "tmp", containerPath = "/tmp", readOnly = false }]

    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.service[each.key].name
        awslogs-region        = var.region
        awslogs-stream-prefix = each.key
      }
    }
    }],
    each.key == "scheduler" ? [local.lag_metric_sidecar] : [],
  ))

  tags = var.tags
}

resource "aws_ecs_service" "service" {
  for_each = local.services

  name                               = each.key
  cluster                            = aws_ecs_cluster.main.id
  task_definition                    = aws_ecs_task_definition.service[each.key].arn
  desired_count                      = each.key == "api" ? var.api_min_count : 1
  launch_type                        = "FARGATE"
  platform_version                   = "LATEST"
  propagate_tags                     = "SERVICE"
  enable_execute_command             = true
  health_check_grace_period_seconds  = each.key == "api" ? 60 : null
  deployment_minimum_healthy_percent = each.key == "api" ? 100 : 0
  deployment_maximum_percent         = each.key == "api" ? 200 : 100

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [each.key == "api" ? var.api_security_group_id : var.pipeline_security_group_id]
    assign_public_ip = false
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  dynamic "load_balancer" {
    for_each = each.key == "api" ? [1] : []

    content {
      target_group_arn = aws_lb_target_group.api.arn
      container_name   = "api"
      container_port   = 8080
    }
  }

  lifecycle {
    ignore_changes = [desired_count] # the API's count belongs to its autoscaling target
  }

  tags = var.tags

  depends_on = [aws_lb_listener.https]
}

# The API scales on CPU between api_min_count and api_max_count.
resource "aws_appautoscaling_target" "api" {
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.main.name}/${aws_ecs_service.service["api"].name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.api_min_count
  max_capacity       = var.api_max_count

  tags = var.tags
}

resource "aws_appautoscaling_policy" "api_cpu" {
  name               = "${var.name}-api-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.api.service_namespace
  resource_id        = aws_appautoscaling_target.api.resource_id
  scalable_dimension = aws_appautoscaling_target.api.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = 60
    scale_in_cooldown  = 300
    scale_out_cooldown = 60

    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}

# --- model sync: a one-off task that copies the models bucket onto EFS ---------------------
# Run it after uploading weights to the models bucket (docs/DEPLOY.md, step 9). It writes
# through the EFS access point as uid 10001; the GPU workers mount the same path read-only.

resource "aws_cloudwatch_log_group" "model_sync" {
  name              = "${local.log_group_name_base}/ecs/model-sync"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn

  tags = var.tags
}

resource "aws_ecs_task_definition" "model_sync" {
  family                   = "${var.name}-model-sync"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 1024
  memory                   = 2048
  execution_role_arn       = var.execution_role_arns["model-sync"]
  task_role_arn            = var.task_role_arns["model-sync"]

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  volume {
    name = "models"

    efs_volume_configuration {
      file_system_id     = var.efs_file_system_id
      transit_encryption = "ENABLED"

      authorization_config {
        access_point_id = var.efs_access_point_id
        iam             = "ENABLED"
      }
    }
  }

  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([{
    name                   = "model-sync"
    image                  = var.aws_cli_image
    command                = ["s3", "sync", "s3://${var.models_bucket_name}/", "/models/", "--only-show-errors", "--delete"]
    essential              = true
    readonlyRootFilesystem = true
    environment            = [{ name = "HOME", value = "/tmp" }]
    mountPoints = [
      { sourceVolume = "models", containerPath = "/models", readOnly = false },
      { sourceVolume = "tmp", containerPath = "/tmp", readOnly = false },
    ]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.model_sync.name
        awslogs-region        = var.region
        awslogs-stream-prefix = "model-sync"
      }
    }
  }])

  tags = var.tags
}
