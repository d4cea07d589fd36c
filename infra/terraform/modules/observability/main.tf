# The operator's alarm table, as CloudWatch alarms on one encrypted SNS topic. The same
# thresholds are in infra/observability/prometheus/alerts.yml, and each alarm has a runbook
# entry in docs/DEPLOY.md (section "Runbook").
#
#   alarm                      threshold                     window
#   api-5xx-rate               5xx / requests > 5 %          5 minutes
#   api-latency-p99            p99 target response > 5 s     5 minutes
#   consumer-lag               max lag of any group > 100    5 minutes
#   rds-cpu                    CPU > 80 %                    10 minutes
#   rds-connections            connections > 80 % of max     5 minutes
#   redis-memory (per node)    memory used > 80 %            5 minutes
#   s3-error-rate              (4xx + 5xx) / requests > 1 %  5 minutes

locals {
  rds_connections_ratio = 0.8
  # Free storage below 5 GiB for 5 minutes: storage autoscaling has not caught up (it grows
  # at 10% free, then waits 6 hours before it may grow again) or it is at its ceiling.
  # PostgreSQL out of space refuses every write (RELIABILITY.md, the chaos run's disk-full
  # fault), and a checkpoint that cannot write stops the server.
  rds_free_storage_bytes_min = 5 * 1024 * 1024 * 1024
  redis_members              = [for i in range(1, var.redis_member_count + 1) : format("%s-%03d", var.redis_replication_group, i)]
}

resource "aws_sns_topic" "alarms" {
  name              = "${var.name}-alarms"
  kms_master_key_id = var.kms_key_arn

  tags = var.tags
}

resource "aws_sns_topic_subscription" "email" {
  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

# --- API ------------------------------------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "api_5xx_rate" {
  alarm_name          = "${var.name}-api-5xx-rate"
  alarm_description   = "API 5xx responses above 5% of requests for 5 minutes. Runbook: docs/DEPLOY.md#api-5xx-rate"
  comparison_operator = "GreaterThanThreshold"
  threshold           = 5
  evaluation_periods  = 1
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  metric_query {
    id          = "rate"
    expression  = "IF(requests > 0, 100 * (errors_target + errors_elb) / requests, 0)"
    label       = "5xx rate (%)"
    return_data = true
  }

  metric_query {
    id = "errors_target"

    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "HTTPCode_Target_5XX_Count"
      dimensions  = { LoadBalancer = var.alb_arn_suffix, TargetGroup = var.target_group_arn_suffix }
      period      = 300
      stat        = "Sum"
    }
  }

  metric_query {
    id = "errors_elb"

    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "HTTPCode_ELB_5XX_Count"
      dimensions  = { LoadBalancer = var.alb_arn_suffix }
      period      = 300
      stat        = "Sum"
    }
  }

  metric_query {
    id = "requests"

    metric {
      namespace   = "AWS/ApplicationELB"
      metric_name = "RequestCount"
      dimensions  = { LoadBalancer = var.alb_arn_suffix }
      period      = 300
      stat        = "Sum"
    }
  }

  tags = var.tags
}

resource "aws_cloudwatch_metric_alarm" "api_latency_p99" {
  alarm_name          = "${var.name}-api-latency-p99"
  alarm_description   = "API p99 response time above 5 seconds over 5 minutes. Runbook: docs/DEPLOY.md#api-latency-p99"
  namespace           = "AWS/ApplicationELB"
  metric_name         = "TargetResponseTime"
  dimensions          = { LoadBalancer = var.alb_arn_suffix, TargetGroup = var.target_group_arn_suffix }
  extended_statistic  = "p99"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 5
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  tags = var.tags
}

# --- Kafka ----------------------------------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "consumer_lag" {
  alarm_name          = "${var.name}-consumer-lag"
  alarm_description   = "Some consumer group is more than 100 events behind for 5 minutes (or the lag publisher is silent). Runbook: docs/DEPLOY.md#consumer-lag"
  namespace           = var.lag_metric_namespace
  metric_name         = "MaxConsumerLag"
  dimensions          = { Environment = var.environment }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 5
  datapoints_to_alarm = 5
  comparison_operator = "GreaterThanThreshold"
  threshold           = 100
  treat_missing_data  = "breaching" # a dead publisher must not look like zero lag
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  tags = var.tags
}

# --- RDS ------------------------------------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "rds_cpu" {
  alarm_name          = "${var.name}-rds-cpu"
  alarm_description   = "RDS CPU above 80% for 10 minutes. Runbook: docs/DEPLOY.md#rds-cpu"
  namespace           = "AWS/RDS"
  metric_name         = "CPUUtilization"
  dimensions          = { DBInstanceIdentifier = var.db_instance_id }
  statistic           = "Average"
  period              = 300
  evaluation_periods  = 2
  datapoints_to_alarm = 2
  comparison_operator = "GreaterThanThreshold"
  threshold           = 80
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  tags = var.tags
}

resource "aws_cloudwatch_metric_alarm" "rds_connections" {
  alarm_name          = "${var.name}-rds-connections"
  alarm_description   = "RDS connections above 80% of max_connections (${var.db_max_connections}). Runbook: docs/DEPLOY.md#rds-connections"
  namespace           = "AWS/RDS"
  metric_name         = "DatabaseConnections"
  dimensions          = { DBInstanceIdentifier = var.db_instance_id }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 5
  datapoints_to_alarm = 5
  comparison_operator = "GreaterThanThreshold"
  threshold           = floor(var.db_max_connections * local.rds_connections_ratio)
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  tags = var.tags
}

resource "aws_cloudwatch_metric_alarm" "rds_free_storage" {
  alarm_name          = "${var.name}-rds-free-storage"
  alarm_description   = "RDS free storage below 5 GiB for 5 minutes. Runbook: docs/DEPLOY.md#rds-free-storage"
  namespace           = "AWS/RDS"
  metric_name         = "FreeStorageSpace"
  dimensions          = { DBInstanceIdentifier = var.db_instance_id }
  statistic           = "Minimum"
  period              = 60
  evaluation_periods  = 5
  datapoints_to_alarm = 5
  comparison_operator = "LessThanThreshold"
  threshold           = local.rds_free_storage_bytes_min
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  tags = var.tags
}

# --- Redis ----------------------------------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "redis_memory" {
  for_each = toset(local.redis_members)

  alarm_name          = "${var.name}-redis-memory-${each.key}"
  alarm_description   = "Redis node ${each.key} memory above 80% for 5 minutes. Runbook: docs/DEPLOY.md#redis-memory"
  namespace           = "AWS/ElastiCache"
  metric_name         = "DatabaseMemoryUsagePercentage"
  dimensions          = { CacheClusterId = each.key }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 5
  datapoints_to_alarm = 5
  comparison_operator = "GreaterThanThreshold"
  threshold           = 80
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  tags = var.tags
}

# --- S3 -------------------------------------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "s3_error_rate" {
  alarm_name          = "${var.name}-s3-error-rate"
  alarm_description   = "Images bucket: 4xx + 5xx above 1% of requests for 5 minutes. Runbook: docs/DEPLOY.md#s3-error-rate"
  comparison_operator = "GreaterThanThreshold"
  threshold           = 1
  evaluation_periods  = 1
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  metric_query {
    id          = "rate"
    expression  = "IF(requests > 0, 100 * (errors_4xx + errors_5xx) / requests, 0)"
    label       = "S3 error rate (%)"
    return_data = true
  }

  metric_query {
    id = "errors_4xx"

    metric {
      namespace   = "AWS/S3"
      metric_name = "4xxErrors"
      dimensions  = { BucketName = var.images_bucket_name, FilterId = var.s3_request_metrics_id }
      period      = 300
      stat        = "Sum"
    }
  }

  metric_query {
    id = "errors_5xx"

    metric {
      namespace   = "AWS/S3"
      metric_name = "5xxErrors"
      dimensions  = { BucketName = var.images_bucket_name, FilterId = var.s3_request_metrics_id }
      period      = 300
      stat        = "Sum"
    }
  }

  metric_query {
    id = "requests"

    metric {
      namespace   = "AWS/S3"
      metric_name = "AllRequests"
      dimensions  = { BucketName = var.images_bucket_name, FilterId = var.s3_request_metrics_id }
      period      = 300
      stat        = "Sum"
    }
  }

  tags = var.tags
}
