output "db_instance_id" {
  description = "RDS instance identifier (CloudWatch dimension DBInstanceIdentifier)."
  value       = aws_db_instance.main.identifier
}

output "db_address" {
  description = "RDS endpoint host name."
  value       = aws_db_instance.main.address
}

output "database_secret_arn" {
  description = "Secrets Manager secret of the PostgreSQL connection (key `url` = PINKSEA_DATABASE_URL)."
  value       = aws_secretsmanager_secret.database.arn
}

output "redis_secret_arn" {
  description = "Secrets Manager secret of the Redis connection (key `url` = PINKSEA_REDIS_URL)."
  value       = aws_secretsmanager_secret.redis.arn
}

output "redis_replication_group_id" {
  description = "ElastiCache replication group id."
  value       = aws_elasticache_replication_group.main.id
}

output "redis_member_count" {
  description = "Number of cache clusters (primary + replicas): members are <id>-001, <id>-002, ..."
  value       = aws_elasticache_replication_group.main.num_cache_clusters
}

output "msk_cluster_arn" {
  description = "MSK cluster ARN (IAM policies derive topic and group ARNs from it)."
  value       = aws_msk_cluster.main.arn
}

output "msk_bootstrap_brokers_sasl_iam" {
  description = "Bootstrap brokers for TLS + IAM (port 9098) = PINKSEA_KAFKA_BOOTSTRAP_SERVERS."
  value       = aws_msk_cluster.main.bootstrap_brokers_sasl_iam
}

output "efs_file_system_id" {
  description = "EFS file system of the model weights."
  value       = aws_efs_file_system.models.id
}

output "efs_file_system_arn" {
  description = "EFS file system ARN."
  value       = aws_efs_file_system.models.arn
}

output "efs_access_point_id" {
  description = "EFS access point of /models."
  value       = aws_efs_access_point.models.id
}

output "efs_access_point_arn" {
  description = "EFS access point ARN (IAM conditions)."
  value       = aws_efs_access_point.models.arn
}
