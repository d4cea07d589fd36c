# One EC2 auto-scaling group per GPU tier (basic = g4dn.xlarge / T4, high_performance =
# g5.xlarge / A10G, dedicated = p4d.24xlarge / A100), each running one `pinksea gpu-worker
# --tier <tier>` container, scaled on the tier's Kafka consumer lag that
# infra/aws_lag_metric.py publishes to CloudWatch every minute as GpuBacklog{Environment, Tier}:
# the lag on pinksea.gpu.dispatch.<tier>.v1 (largest over the live workers' groups
# pinksea.gpu.worker.<id>: a departed worker's group is not counted, so the tier scales back
# in after a scale-in) plus the jobs the scheduler still holds for the tier (it dispatches
# only to idle workers, so the topic alone never shows a queue):
#
#   lag > 10  -> +1 instance, 5 min warm-up ("cooldown")
#   lag > 50  -> +3 instances, 3 min warm-up
#   lag < 3 for 10 minutes -> -1 instance
#   min 1, max 10 per tier
#
# Step policies have no cooldown in the EC2 Auto Scaling API; their estimated instance
# warm-up plays that role (new instances count toward capacity but not toward the metric
# until it has passed). When both scale-out alarms fire, Auto Scaling applies the policy
# that gives the larger capacity (+3), never both.

data "aws_ssm_parameter" "gpu_ami" {
  # Amazon Linux 2023, ECS-optimized GPU AMI: NVIDIA driver, Docker and the NVIDIA
  # container toolkit preinstalled (the ECS agent is disabled by the user data).
  name = "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id"
}

resource "aws_cloudwatch_log_group" "gpu" {
  for_each = var.gpu_tiers

  name              = "${local.log_group_name_base}/gpu/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn

  tags = var.tags
}

resource "aws_launch_template" "gpu" {
  for_each = var.gpu_tiers

  name_prefix            = "${var.name}-gpu-${each.key}-"
  image_id               = data.aws_ssm_parameter.gpu_ami.insecure_value
  instance_type          = each.value.instance_type
  update_default_version = true
  ebs_optimized          = true

  iam_instance_profile {
    name = var.gpu_instance_profile_names[each.key]
  }

  network_interfaces {
    associate_public_ip_address = false
    security_groups             = [var.gpu_security_group_id]
    delete_on_termination       = true
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required" # IMDSv2 only
    http_put_response_hop_limit = 1          # the container uses the host network (no extra hop)
  }

  monitoring {
    enabled = true
  }

  block_device_mappings {
    device_name = "/dev/xvda"

    ebs {
      volume_size           = var.gpu_root_volume_size
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = var.kms_key_arn
      delete_on_termination = true
    }
  }

  user_data = base64encode(templatefile("${path.module}/gpu-user-data.sh.tftpl", {
    region              = var.region
    tier                = each.key
    image               = local.gpu_image
    registry            = split("/", aws_ecr_repository.this["gpu-worker"].repository_url)[0]
    log_group           = aws_cloudwatch_log_group.gpu[each.key].name
    efs_file_system_id  = var.efs_file_system_id
    efs_access_point_id = var.efs_access_point_id
    redis_secret_arn    = var.redis_secret_arn
    environment = merge(local.common_environment, {
      PINKSEA_MODELS_DIR       = "/models"
      PINKSEA_MODELS_S3_BUCKET = var.models_bucket_name # fallback when a model is not on EFS
    })
  }))

  tag_specifications {
    resource_type = "instance"
    tags          = merge(var.tags, { Name = "${var.name}-gpu-${each.key}", GpuTier = each.key })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(var.tags, { Name = "${var.name}-gpu-${each.key}", GpuTier = each.key })
  }

  tags = merge(var.tags, { GpuTier = each.key })
}

resource "aws_autoscaling_group" "gpu" {
  for_each = var.gpu_tiers

  name                      = "${var.name}-gpu-${each.key}"
  min_size                  = each.value.min_size
  max_size                  = each.value.max_size
  vpc_zone_identifier       = var.private_subnet_ids
  health_check_type         = "EC2"
  health_check_grace_period = 300
  default_instance_warmup   = 300
  capacity_rebalance        = each.value.spot
  enabled_metrics           = ["GroupDesiredCapacity", "GroupInServiceInstances", "GroupPendingInstances", "GroupTerminatingInstances"]

  mixed_instances_policy {
    instances_distribution {
      # Spot: one on-demand worker always, everything above it on Spot.
      on_demand_base_capacity                  = each.value.spot ? 1 : 0
      on_demand_percentage_above_base_capacity = each.value.spot ? 0 : 100
      spot_allocation_strategy                 = "price-capacity-optimized"
    }

    launch_template {
      launch_template_specification {
        launch_template_id = aws_launch_template.gpu[each.key].id
        version            = "$Latest"
      }
    }
  }

  instance_refresh {
    strategy = "Rolling"

    preferences {
      min_healthy_percentage = 50
    }
  }

  dynamic "tag" {
    for_each = merge(var.tags, { Name = "${var.name}-gpu-${each.key}", GpuTier = each.key })

    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    ignore_changes = [desired_capacity] # owned by the scaling policies
  }
}

# --- scaling on consumer lag ----------------------------------------------------------------

resource "aws_autoscaling_policy" "gpu_lag_scale_out_small" {
  for_each = var.gpu_tiers

  name                      = "${var.name}-gpu-${each.key}-lag-over-10"
  autoscaling_group_name    = aws_autoscaling_group.gpu[each.key].name
  policy_type               = "StepScaling"
  adjustment_type           = "ChangeInCapacity"
  metric_aggregation_type   = "Maximum"
  estimated_instance_warmup = 300 # the table's 5-minute cooldown

  step_adjustment {
    scaling_adjustment          = 1
    metric_interval_lower_bound = 0
  }
}

resource "aws_autoscaling_policy" "gpu_lag_scale_out_large" {
  for_each = var.gpu_tiers

  name                      = "${var.name}-gpu-${each.key}-lag-over-50"
  autoscaling_group_name    = aws_autoscaling_group.gpu[each.key].name
  policy_type               = "StepScaling"
  adjustment_type           = "ChangeInCapacity"
  metric_aggregation_type   = "Maximum"
  estimated_instance_warmup = 180 # the table's 3-minute cooldown

  step_adjustment {
    scaling_adjustment          = 3
    metric_interval_lower_bound = 0
  }
}

resource "aws_autoscaling_policy" "gpu_lag_scale_in" {
  for_each = var.gpu_tiers

  name                    = "${var.name}-gpu-${each.key}-lag-under-3"
  autoscaling_group_name  = aws_autoscaling_group.gpu[each.key].name
  policy_type             = "StepScaling"
  adjustment_type         = "ChangeInCapacity"
  metric_aggregation_type = "Maximum"

  step_adjustment {
    scaling_adjustment          = -1
    metric_interval_upper_bound = 0
  }
}

resource "aws_cloudwatch_metric_alarm" "gpu_lag_over_10" {
  for_each = var.gpu_tiers

  alarm_name          = "${var.name}-gpu-${each.key}-lag-over-10"
  alarm_description   = "Scale out the ${each.key} GPU tier by 1: dispatch lag above 10 for 1 minute"
  namespace           = local.lag_metric_namespace
  metric_name         = "GpuBacklog"
  dimensions          = { Environment = var.environment, Tier = each.key }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 10
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_autoscaling_policy.gpu_lag_scale_out_small[each.key].arn]

  tags = var.tags
}

resource "aws_cloudwatch_metric_alarm" "gpu_lag_over_50" {
  for_each = var.gpu_tiers

  alarm_name          = "${var.name}-gpu-${each.key}-lag-over-50"
  alarm_description   = "Scale out the ${each.key} GPU tier by 3: dispatch lag above 50 for 1 minute"
  namespace           = local.lag_metric_namespace
  metric_name         = "GpuBacklog"
  dimensions          = { Environment = var.environment, Tier = each.key }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 50
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_autoscaling_policy.gpu_lag_scale_out_large[each.key].arn]

  tags = var.tags
}

resource "aws_cloudwatch_metric_alarm" "gpu_lag_under_3" {
  for_each = var.gpu_tiers

  alarm_name          = "${var.name}-gpu-${each.key}-lag-under-3"
  alarm_description   = "Scale in the ${each.key} GPU tier by 1: dispatch lag below 3 for 10 minutes"
  namespace           = local.lag_metric_namespace
  metric_name         = "GpuBacklog"
  dimensions          = { Environment = var.environment, Tier = each.key }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 10
  datapoints_to_alarm = 10
  comparison_operator = "LessThanThreshold"
  threshold           = 3
  treat_missing_data  = "notBreaching" # no metric (publisher down): never scale in blindly
  alarm_actions       = [aws_autoscaling_policy.gpu_lag_scale_in[each.key].arn]

  tags = var.tags
}
