variable "name" {
  description = "Name prefix."
  type        = string
}

variable "tags" {
  description = "Tags of every resource."
  type        = map(string)
}

variable "environment" {
  description = "Environment (a dimension of the consumer-lag metric)."
  type        = string
}

variable "region" {
  description = "AWS region."
  type        = string
}

variable "vpc_id" {
  description = "VPC."
  type        = string
}

variable "public_subnet_ids" {
  description = "Subnets of the load balancer."
  type        = list(string)
}

variable "alb_subnet_cidrs" {
  description = "CIDR ranges of the load balancer's subnets, comma-separated: the only peers whose X-Forwarded-For the API trusts (PINKSEA_FORWARDED_ALLOW_IPS)."
  type        = string

  validation {
    condition     = alltrue([for c in split(",", var.alb_subnet_cidrs) : can(cidrhost(trimspace(c), 0))])
    error_message = "alb_subnet_cidrs must be comma-separated CIDR ranges."
  }
}

variable "private_subnet_ids" {
  description = "Subnets of the ECS tasks and GPU workers."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "Customer-managed key (ECR, logs, EBS)."
  type        = string
}

variable "alb_security_group_id" {
  description = "Security group of the load balancer."
  type        = string
}

variable "api_security_group_id" {
  description = "Security group of the API tasks."
  type        = string
}

variable "pipeline_security_group_id" {
  description = "Security group of the pipeline tasks."
  type        = string
}

variable "gpu_security_group_id" {
  description = "Security group of the GPU workers (and of the model-sync task)."
  type        = string
}

variable "alb_certificate_arn" {
  description = "Certificate of origin.<domain> on the HTTPS listener."
  type        = string
}

variable "logs_bucket_name" {
  description = "Bucket of the load balancer's access logs."
  type        = string
}

variable "images_bucket_name" {
  description = "Bucket of generated images (PINKSEA_S3_BUCKET)."
  type        = string
}

variable "models_bucket_name" {
  description = "Bucket of model weights (synced to EFS by the model-sync task)."
  type        = string
}

variable "cdn_domain_name" {
  description = "Public domain that serves signed image URLs."
  type        = string
}

variable "cloudfront_public_key_id" {
  description = "CloudFront public key id of the image URL signer."
  type        = string
}

variable "stripe_price_ids" {
  description = "Stripe price id of each paid plan (PINKSEA_STRIPE_PRICE_IDS)."
  type        = map(string)
}

variable "msk_bootstrap_brokers" {
  description = "MSK bootstrap brokers (TLS + IAM)."
  type        = string
}

variable "efs_file_system_id" {
  description = "EFS file system of the model weights."
  type        = string
}

variable "efs_access_point_id" {
  description = "EFS access point of /models (uid 10001)."
  type        = string
}

variable "aws_cli_image" {
  description = "Image of the model-sync task (the AWS CLI, pinned)."
  type        = string
  default     = "public.ecr.aws/aws-cli/aws-cli:2.22.35"
}

variable "database_secret_arn" {
  description = "Secret of the PostgreSQL connection."
  type        = string
}

variable "redis_secret_arn" {
  description = "Secret of the Redis connection."
  type        = string
}

variable "stripe_secret_arn" {
  description = "Secret of the Stripe keys."
  type        = string
}

variable "personal_data_secret_arn" {
  description = "Secret holding the key-encryption key of the users' data keys."
  type        = string
}

variable "cloudfront_signing_secret" {
  description = "Secret holding the private key that signs image URLs."
  type        = string
}

variable "cognito_issuer" {
  description = "Issuer URL of the Cognito user pool."
  type        = string
}

variable "cognito_client_id" {
  description = "Cognito app client id (the JWT audience)."
  type        = string
}

variable "execution_role_arns" {
  description = "ECS task execution role per service."
  type        = map(string)
}

variable "task_role_arns" {
  description = "ECS task role per service."
  type        = map(string)
}

variable "gpu_instance_profile_names" {
  description = "Instance profile per GPU tier."
  type        = map(string)
}

variable "image_tag" {
  description = "Release tag of both images."
  type        = string
}

variable "api_cpu" {
  description = "Fargate CPU units of one API task."
  type        = number
}

variable "api_memory" {
  description = "Fargate memory (MiB) of one API task."
  type        = number
}

variable "api_min_count" {
  description = "Minimum number of API tasks."
  type        = number
}

variable "api_max_count" {
  description = "Maximum number of API tasks."
  type        = number
}

variable "pipeline_cpu" {
  description = "Fargate CPU units of one pipeline task."
  type        = number
}

variable "pipeline_memory" {
  description = "Fargate memory (MiB) of one pipeline task."
  type        = number
}

variable "gpu_tiers" {
  description = "Enabled GPU tiers."
  type = map(object({
    enabled       = bool
    instance_type = string
    min_size      = number
    max_size      = number
    spot          = bool
  }))
}

variable "gpu_root_volume_size" {
  description = "Root volume of a GPU worker in GiB."
  type        = number
}

variable "log_retention_days" {
  description = "Retention of the log groups."
  type        = number
}
