output "cognito_user_pool_id" {
  description = "Cognito user pool."
  value       = aws_cognito_user_pool.main.id
}

output "cognito_issuer" {
  description = "JWT issuer (its /.well-known/jwks.json holds the keys)."
  value       = local.cognito_issuer
}

output "cognito_web_client_id" {
  description = "Web app client id (the JWT audience)."
  value       = aws_cognito_user_pool_client.web.id
}

output "stripe_secret_arn" {
  description = "Secret of the Stripe keys."
  value       = aws_secretsmanager_secret.stripe.arn
}

output "cognito_secret_arn" {
  description = "Secret of the Cognito server client."
  value       = aws_secretsmanager_secret.cognito.arn
}

output "personal_data_secret_arn" {
  description = "Secret of the key-encryption key of the users' data keys."
  value       = aws_secretsmanager_secret.personal_data.arn
}

output "cloudfront_signing_secret_arn" {
  description = "Secret of the CloudFront URL signing key."
  value       = aws_secretsmanager_secret.cloudfront_signing.arn
}

output "execution_role_arns" {
  description = "ECS execution role per service."
  value       = { for k, r in aws_iam_role.execution : k => r.arn }
}

output "task_role_arns" {
  description = "ECS task role per service."
  value       = { for k, r in aws_iam_role.task : k => r.arn }
}

output "gpu_instance_profile_names" {
  description = "Instance profile per GPU tier."
  value       = { for k, p in aws_iam_instance_profile.gpu : k => p.name }
}

output "github_deploy_role_arn" {
  description = "Role of the release pipeline (GitHub OIDC); null when github_repository is empty."
  value       = one(aws_iam_role.github_deploy[*].arn)
}
