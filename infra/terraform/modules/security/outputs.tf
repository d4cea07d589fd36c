output "kms_key_arn" {
  description = "ARN of the customer-managed key of every data store."
  value       = aws_kms_key.main.arn
}

output "alb_security_group_id" {
  description = "Security group of the load balancer."
  value       = aws_security_group.alb.id
}

output "api_security_group_id" {
  description = "Security group of the API tasks."
  value       = aws_security_group.api.id
}

output "pipeline_security_group_id" {
  description = "Security group of the pipeline tasks."
  value       = aws_security_group.pipeline.id
}

output "gpu_security_group_id" {
  description = "Security group of the GPU workers."
  value       = aws_security_group.gpu.id
}

output "db_security_group_id" {
  description = "Security group of RDS."
  value       = aws_security_group.db.id
}

output "redis_security_group_id" {
  description = "Security group of ElastiCache."
  value       = aws_security_group.redis.id
}

output "msk_security_group_id" {
  description = "Security group of MSK."
  value       = aws_security_group.msk.id
}

output "efs_security_group_id" {
  description = "Security group of EFS."
  value       = aws_security_group.efs.id
}
