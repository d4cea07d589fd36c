variable "name" {
  description = "Name prefix."
  type        = string
}

variable "tags" {
  description = "Tags of every resource."
  type        = map(string)
}

variable "region" {
  description = "AWS region."
  type        = string
}

variable "domain_name" {
  description = "Public domain (Cognito callback URLs)."
  type        = string
}

variable "kms_key_arn" {
  description = "Customer-managed key (secrets, S3 objects, EFS)."
  type        = string
}

variable "database_secret_arn" {
  description = "Secret of the PostgreSQL connection."
  type        = string
}

variable "redis_secret_arn" {
  description = "Secret of the Redis connection."
  type        = string
}

variable "msk_cluster_arn" {
  description = "MSK cluster ARN; topic and group ARNs derive from it."
  type        = string
}

variable "efs_file_system_arn" {
  description = "EFS file system of the model weights."
  type        = string
}

variable "efs_access_point_arn" {
  description = "EFS access point of /models."
  type        = string
}

variable "images_bucket_arn" {
  description = "Bucket of generated images."
  type        = string
}

variable "models_bucket_arn" {
  description = "Bucket of model weights."
  type        = string
}

variable "ecr_repository_arns" {
  description = "ECR repositories: app and gpu-worker."
  type        = map(string)
}

variable "gpu_tiers" {
  description = "Enabled GPU tiers (one instance role each)."
  type        = list(string)
}

variable "metric_namespace" {
  description = "The only CloudWatch namespace the lag publisher may write to."
  type        = string
}

variable "log_group_name_base" {
  description = "Prefix of the services' log groups."
  type        = string
}

variable "github_repository" {
  description = "GitHub repository (owner/name) whose release pipeline may assume the deploy role; empty: no role."
  type        = string
  default     = ""

  validation {
    condition     = var.github_repository == "" || can(regex("^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", var.github_repository))
    error_message = "github_repository must be owner/name (or empty)."
  }
}

variable "github_environment" {
  description = "GitHub environment whose jobs may assume the deploy role (the OIDC sub claim)."
  type        = string
}

variable "github_oidc_provider_arn" {
  description = "The account's existing GitHub OIDC provider; empty: this state creates it."
  type        = string
  default     = ""
}

variable "github_deploy_pull_repository_arns" {
  description = "ECR repositories of another environment the deploy role may pull from (production: staging's, to promote the same digest)."
  type        = list(string)
  default     = []
}
