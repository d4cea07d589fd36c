output "name_servers" {
  description = "Delegate the domain to these name servers (docs/DEPLOY.md, step 4)."
  value       = module.storage.name_servers
}

output "cloudfront_domain_name" {
  description = "CloudFront distribution domain."
  value       = module.storage.cloudfront_domain_name
}

output "cloudfront_distribution_id" {
  description = "CloudFront distribution id (invalidate after a frontend deploy)."
  value       = module.storage.cloudfront_distribution_id
}

output "alb_dns_name" {
  description = "Load balancer DNS name (origin.<domain> aliases it)."
  value       = module.compute.alb_dns_name
}

output "ecr_repository_urls" {
  description = "Push the images here: app (pinksea) and gpu-worker."
  value       = module.compute.ecr_repository_urls
}

output "ecs_cluster_name" {
  description = "ECS cluster of the API and the pipeline services."
  value       = module.compute.ecs_cluster_name
}

output "gpu_autoscaling_group_names" {
  description = "GPU auto-scaling group per enabled tier."
  value       = module.compute.gpu_autoscaling_group_names
}

output "bucket_names" {
  description = "S3 buckets by role."
  value       = module.storage.bucket_names
}

output "database_secret_arn" {
  description = "Secret holding PINKSEA_DATABASE_URL (key `url`)."
  value       = module.data.database_secret_arn
}

output "stripe_secret_arn" {
  description = "Put the Stripe keys here (docs/DEPLOY.md, step 6)."
  value       = module.identity.stripe_secret_arn
}

output "personal_data_secret_arn" {
  description = "Put the key-encryption key of the users' data keys here (docs/DEPLOY.md, step 8)."
  value       = module.identity.personal_data_secret_arn
}

output "cloudfront_signing_secret_arn" {
  description = "Put the image URL signing key here (docs/DEPLOY.md, step 6)."
  value       = module.identity.cloudfront_signing_secret_arn
}

output "cognito_user_pool_id" {
  description = "Cognito user pool."
  value       = module.identity.cognito_user_pool_id
}

output "cognito_issuer" {
  description = "JWT issuer."
  value       = module.identity.cognito_issuer
}

output "cognito_web_client_id" {
  description = "Web app client id."
  value       = module.identity.cognito_web_client_id
}

output "alarm_topic_arn" {
  description = "SNS topic of every alarm."
  value       = module.observability.alarm_topic_arn
}

output "lag_metric_namespace" {
  description = "CloudWatch namespace of the consumer-lag metric."
  value       = module.compute.lag_metric_namespace
}

output "github_deploy_role_arn" {
  description = "AWS_DEPLOY_ROLE_ARN of this GitHub environment (docs/DEPLOY.md, Release pipeline)."
  value       = module.identity.github_deploy_role_arn
}

output "ecr_repository_arns" {
  description = "ECR repository ARNs (production's github_deploy_pull_repository_arns is staging's)."
  value       = module.compute.ecr_repository_arns
}
