output "alb_arn" {
  description = "Load balancer ARN."
  value       = aws_lb.api.arn
}

output "alb_dns_name" {
  description = "Load balancer DNS name."
  value       = aws_lb.api.dns_name
}

output "alb_zone_id" {
  description = "Hosted zone of the load balancer's DNS name."
  value       = aws_lb.api.zone_id
}

output "alb_arn_suffix" {
  description = "Load balancer ARN suffix (CloudWatch dimension LoadBalancer)."
  value       = aws_lb.api.arn_suffix
}

output "api_target_group_arn_suffix" {
  description = "Target group ARN suffix (CloudWatch dimension TargetGroup)."
  value       = aws_lb_target_group.api.arn_suffix
}

output "ecr_repository_arns" {
  description = "ECR repositories: app (API and pipeline) and gpu-worker."
  value       = { for k, r in aws_ecr_repository.this : k => r.arn }
}

output "ecr_repository_urls" {
  description = "Where CI pushes the images."
  value       = { for k, r in aws_ecr_repository.this : k => r.repository_url }
}

output "ecs_cluster_name" {
  description = "ECS cluster."
  value       = aws_ecs_cluster.main.name
}

output "gpu_autoscaling_group_names" {
  description = "GPU auto-scaling group per tier."
  value       = { for k, g in aws_autoscaling_group.gpu : k => g.name }
}

output "lag_metric_namespace" {
  description = "CloudWatch namespace of the consumer-lag metric."
  value       = local.lag_metric_namespace
}

output "log_group_name_base" {
  description = "Prefix of every log group of the services."
  value       = local.log_group_name_base
}
