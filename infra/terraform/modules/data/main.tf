# The stateful part: RDS PostgreSQL 16 (event store + read models), MSK (Kafka), ElastiCache
# Redis and the EFS model store. Every one is encrypted at rest with the customer-managed key
# and in transit with TLS. The connection secrets live in Secrets Manager and reach the
# containers as PINKSEA_DATABASE_URL / PINKSEA_REDIS_URL.

data "aws_region" "current" {}

# ============================================================================================
# RDS PostgreSQL 16
# ============================================================================================

resource "random_password" "db" {
  length  = 40
  special = false # the password goes into a URL (PINKSEA_DATABASE_URL): no escaping needed
}

resource "aws_db_subnet_group" "main" {
  name       = "${var.name}-postgres"
  subnet_ids = var.data_subnet_ids

  tags = var.tags
}

resource "aws_db_parameter_group" "postgres16" {
  name   = "${var.name}-postgres16"
  family = "postgres16"

  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  parameter {
    name         = "max_connections"
    value        = tostring(var.db_max_connections)
    apply_method = "pending-reboot"
  }

  parameter {
    name  = "log_min_duration_statement"
    value = "500"
  }

  parameter {
    name  = "log_statement"
    value = "ddl"
  }

  parameter {
    name  = "log_lock_waits"
    value = "1"
  }

  tags = var.tags
}

data "aws_iam_policy_document" "rds_monitoring_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "rds_monitoring" {
  name               = "${var.name}-rds-monitoring"
  assume_role_policy = data.aws_iam_policy_document.rds_monitoring_assume.json

  tags = var.tags
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  role       = aws_iam_role.rds_monitoring.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

resource "aws_db_instance" "main" {
  identifier     = "${var.name}-postgres"
  engine         = "postgres"
  engine_version = "16"
  instance_class = var.db_instance_class

  db_name  = "pinksea"
  username = "pinksea"
  password = random_password.db.result
  port     = 5432

  multi_az              = true
  storage_type          = "gp3"
  allocated_storage     = var.db_allocated_storage
  max_allocated_storage = var.db_max_allocated_storage
  storage_encrypted     = true
  kms_key_id            = var.kms_key_arn

  db_subnet_group_name   = aws_db_subnet_group.main.name
  vpc_security_group_ids = [var.db_security_group_id]
  publicly_accessible    = false
  parameter_group_name   = aws_db_parameter_group.postgres16.name
  ca_cert_identifier     = "rds-ca-rsa2048-g1"

  backup_retention_period  = 7
  backup_window            = "17:00-18:00" # 02:00-03:00 KST
  maintenance_window       = "sun:18:30-sun:19:30"
  copy_tags_to_snapshot    = true
  delete_automated_backups = false
  deletion_protection      = true
  skip_final_snapshot      = false

  final_snapshot_identifier = "${var.name}-postgres-final"

  performance_insights_enabled          = true
  performance_insights_kms_key_id       = var.kms_key_arn
  performance_insights_retention_period = 7

  monitoring_interval                 = 60
  monitoring_role_arn                 = aws_iam_role.rds_monitoring.arn
  enabled_cloudwatch_logs_exports     = ["postgresql", "upgrade"]
  iam_database_authentication_enabled = true
  auto_minor_version_upgrade          = true
  apply_immediately                   = false

  tags = var.tags
}

resource "aws_secretsmanager_secret" "database" {
  # checkov:skip=CKV2_AWS_57:Rotating the master password needs a rotation Lambda in the VPC; rotation is a documented manual runbook step (docs/DEPLOY.md).
  name                    = "${var.name}/database"
  description             = "PostgreSQL connection of the event store: {username, password, host, port, dbname, url}"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = 30

  tags = var.tags
}

resource "aws_secretsmanager_secret_version" "database" {
  secret_id = aws_secretsmanager_secret.database.id
  secret_string = jsonencode({
    username = aws_db_instance.main.username
    password = random_password.db.result
    host     = aws_db_instance.main.address
    port     = aws_db_instance.main.port
    dbname   = aws_db_instance.main.db_name
    url      = "postgresql://${aws_db_instance.main.username}:${random_password.db.result}@${aws_db_instance.main.address}:${aws_db_instance.main.port}/${aws_db_instance.main.db_name}?sslmode=require"
  })
}

# ============================================================================================
# MSK: 3 brokers, TLS + IAM authentication, encryption at rest with the customer key
# ============================================================================================

resource "aws_msk_configuration" "main" {
  name           = "${var.name}-kafka"
  kafka_versions = ["3.6.0"]

  # Topics are created explicitly (one partition count per topic); acks=all with
  # min.insync.replicas=2 survives the loss of one broker without losing a write.
  server_properties = <<-PROPERTIES
    auto.create.topics.enable=false
    default.replication.factor=3
    min.insync.replicas=2
    num.partitions=6
    unclean.leader.election.enable=false
    log.retention.hours=168
  PROPERTIES
}

resource "aws_cloudwatch_log_group" "msk" {
  name              = "/${var.name}/msk"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn

  tags = var.tags
}

resource "aws_msk_cluster" "main" {
  cluster_name           = "${var.name}-kafka"
  kafka_version          = "3.6.0"
  number_of_broker_nodes = 3
  enhanced_monitoring    = "PER_TOPIC_PER_BROKER"

  broker_node_group_info {
    instance_type   = var.msk_instance_type
    client_subnets  = var.data_subnet_ids
    security_groups = [var.msk_security_group_id]

    storage_info {
      ebs_storage_info {
        volume_size = var.msk_ebs_volume_size
      }
    }

    connectivity_info {
      public_access {
        type = "DISABLED"
      }
    }
  }

  client_authentication {
    unauthenticated = false

    sasl {
      iam = true
    }
  }

  encryption_info {
    encryption_at_rest_kms_key_arn = var.kms_key_arn

    encryption_in_transit {
      client_broker = "TLS"
      in_cluster    = true
    }
  }

  configuration_info {
    arn      = aws_msk_configuration.main.arn
    revision = aws_msk_configuration.main.latest_revision
  }

  logging_info {
    broker_logs {
      cloudwatch_logs {
        enabled   = true
        log_group = aws_cloudwatch_log_group.msk.name
      }
    }
  }

  tags = var.tags
}

# ============================================================================================
# ElastiCache Redis: primary + replica, Multi-AZ failover, TLS, encrypted at rest, AUTH token
# ============================================================================================

resource "random_password" "redis" {
  length  = 64
  special = false # goes into a URL (PINKSEA_REDIS_URL)
}

resource "aws_elasticache_subnet_group" "main" {
  name       = "${var.name}-redis"
  subnet_ids = slice(var.data_subnet_ids, 0, 2)

  tags = var.tags
}

resource "aws_cloudwatch_log_group" "redis_slow" {
  name              = "/${var.name}/redis/slow-log"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn

  tags = var.tags
}

resource "aws_elasticache_replication_group" "main" {
  replication_group_id = "${var.name}-redis"
  description          = "Pinksea rate limits, caches, progress pub/sub and cancel flags"
  engine               = "redis"
  engine_version       = "7.1"
  node_type            = var.redis_node_type
  port                 = 6379
  parameter_group_name = "default.redis7"

  num_cache_clusters         = 2 # primary + one replica
  automatic_failover_enabled = true
  multi_az_enabled           = true

  subnet_group_name  = aws_elasticache_subnet_group.main.name
  security_group_ids = [var.redis_security_group_id]

  at_rest_encryption_enabled = true
  kms_key_id                 = var.kms_key_arn
  transit_encryption_enabled = true
  auth_token                 = random_password.redis.result

  snapshot_retention_limit   = 7
  snapshot_window            = "18:00-19:00"
  maintenance_window         = "sun:19:30-sun:20:30"
  auto_minor_version_upgrade = true
  apply_immediately          = false

  log_delivery_configuration {
    destination      = aws_cloudwatch_log_group.redis_slow.name
    destination_type = "cloudwatch-logs"
    log_format       = "json"
    log_type         = "slow-log"
  }

  tags = var.tags
}

resource "aws_secretsmanager_secret" "redis" {
  # checkov:skip=CKV2_AWS_57:The AUTH token rotates with `tofu apply -replace=module.data.random_password.redis` (ElastiCache keeps the old token valid during ROTATE); no rotation Lambda.
  name                    = "${var.name}/redis"
  description             = "Redis connection: {auth_token, host, port, url} (rediss:// = TLS)"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = 30

  tags = var.tags
}

resource "aws_secretsmanager_secret_version" "redis" {
  secret_id = aws_secretsmanager_secret.redis.id
  secret_string = jsonencode({
    auth_token = random_password.redis.result
    host       = aws_elasticache_replication_group.main.primary_endpoint_address
    port       = 6379
    url        = "rediss://:${random_password.redis.result}@${aws_elasticache_replication_group.main.primary_endpoint_address}:6379/0"
  })
}

# ============================================================================================
# EFS: model weights, mounted read-only into the GPU workers at /models
# ============================================================================================

resource "aws_efs_file_system" "models" {
  creation_token   = "${var.name}-models"
  encrypted        = true
  kms_key_id       = var.kms_key_arn
  performance_mode = "generalPurpose"
  throughput_mode  = "elastic"

  lifecycle_policy {
    transition_to_ia = "AFTER_30_DAYS"
  }

  tags = merge(var.tags, { Name = "${var.name}-models" })
}

resource "aws_efs_backup_policy" "models" {
  file_system_id = aws_efs_file_system.models.id

  backup_policy {
    status = "ENABLED"
  }
}

# Everything on the file system is owned by uid 10001 (the containers' user).
resource "aws_efs_access_point" "models" {
  file_system_id = aws_efs_file_system.models.id

  posix_user {
    uid = 10001
    gid = 10001
  }

  root_directory {
    path = "/models"

    creation_info {
      owner_uid   = 10001
      owner_gid   = 10001
      permissions = "0755"
    }
  }

  tags = merge(var.tags, { Name = "${var.name}-models" })
}

# Only TLS connections through the access point (the GPU workers read-only by IAM policy).
data "aws_iam_policy_document" "efs" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["*"]
    resources = [aws_efs_file_system.models.arn]

    principals {
      type        = "AWS"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_efs_file_system_policy" "models" {
  file_system_id = aws_efs_file_system.models.id
  policy         = data.aws_iam_policy_document.efs.json
}

resource "aws_efs_mount_target" "models" {
  count = length(var.efs_subnet_ids)

  file_system_id  = aws_efs_file_system.models.id
  subnet_id       = var.efs_subnet_ids[count.index]
  security_groups = [var.efs_security_group_id]
}
