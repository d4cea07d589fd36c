# Pinksea on AWS: one VPC, the event store on RDS PostgreSQL, Kafka on MSK, Redis on
# ElastiCache, images in S3 behind CloudFront, the API and the pipeline processes on ECS
# Fargate, and one GPU auto-scaling group per tier scaled on Kafka consumer lag.
# See docs/DEPLOY.md for the order of operations.

locals {
  name = "${var.project}-${var.environment}"

  # Every taggable resource gets these twice over: through the provider's default_tags and
  # through an explicit `tags` argument (so a reader, and tests/infra, can see them).
  tags = merge(
    {
      Project     = var.project
      Environment = var.environment
      ManagedBy   = "terraform"
      Repository  = "pinksea"
    },
    var.tags,
  )
}

provider "aws" {
  region = var.region

  default_tags {
    tags = local.tags
  }
}

# CloudFront only accepts certificates and web ACLs from us-east-1.
provider "aws" {
  alias  = "us_east_1"
  region = "us-east-1"

  default_tags {
    tags = local.tags
  }
}

module "network" {
  source = "./modules/network"

  name                        = local.name
  tags                        = local.tags
  vpc_cidr                    = var.vpc_cidr
  availability_zones          = var.availability_zones
  msk_third_availability_zone = var.msk_third_availability_zone
  public_subnet_cidrs         = var.public_subnet_cidrs
  private_subnet_cidrs        = var.private_subnet_cidrs
  data_subnet_cidrs           = var.data_subnet_cidrs
  kms_key_arn                 = module.security.kms_key_arn
  log_retention_days          = var.log_retention_days
}

module "security" {
  source = "./modules/security"

  name   = local.name
  tags   = local.tags
  region = var.region
  vpc_id = module.network.vpc_id
}

module "data" {
  source = "./modules/data"

  name                     = local.name
  tags                     = local.tags
  data_subnet_ids          = module.network.data_subnet_ids
  efs_subnet_ids           = slice(module.network.data_subnet_ids, 0, length(var.availability_zones))
  kms_key_arn              = module.security.kms_key_arn
  db_security_group_id     = module.security.db_security_group_id
  redis_security_group_id  = module.security.redis_security_group_id
  msk_security_group_id    = module.security.msk_security_group_id
  efs_security_group_id    = module.security.efs_security_group_id
  db_instance_class        = var.db_instance_class
  db_allocated_storage     = var.db_allocated_storage
  db_max_allocated_storage = var.db_max_allocated_storage
  db_max_connections       = var.db_max_connections
  redis_node_type          = var.redis_node_type
  msk_instance_type        = var.msk_instance_type
  msk_ebs_volume_size      = var.msk_ebs_volume_size
  log_retention_days       = var.log_retention_days
}

module "storage" {
  source = "./modules/storage"

  providers = {
    aws           = aws
    aws.us_east_1 = aws.us_east_1
  }

  name                       = local.name
  tags                       = local.tags
  domain_name                = var.domain_name
  kms_key_arn                = module.security.kms_key_arn
  alb_dns_name               = module.compute.alb_dns_name
  alb_zone_id                = module.compute.alb_zone_id
  cloudfront_public_key_path = "${path.root}/${var.cloudfront_public_key_path}"
  cloudfront_price_class     = var.cloudfront_price_class
  log_retention_days         = var.log_retention_days
}

module "identity" {
  source = "./modules/identity"

  name                 = local.name
  tags                 = local.tags
  region               = var.region
  domain_name          = var.domain_name
  kms_key_arn          = module.security.kms_key_arn
  database_secret_arn  = module.data.database_secret_arn
  redis_secret_arn     = module.data.redis_secret_arn
  msk_cluster_arn      = module.data.msk_cluster_arn
  efs_file_system_arn  = module.data.efs_file_system_arn
  efs_access_point_arn = module.data.efs_access_point_arn
  images_bucket_arn    = module.storage.bucket_arns["images"]
  models_bucket_arn    = module.storage.bucket_arns["models"]
  ecr_repository_arns  = module.compute.ecr_repository_arns
  gpu_tiers            = keys({ for tier, t in var.gpu_tiers : tier => t if t.enabled })
  metric_namespace     = module.compute.lag_metric_namespace
  log_group_name_base  = module.compute.log_group_name_base

  github_repository                  = var.github_repository
  github_environment                 = var.environment # the GitHub environment of the same name
  github_oidc_provider_arn           = var.github_oidc_provider_arn
  github_deploy_pull_repository_arns = var.github_deploy_pull_repository_arns
}

module "compute" {
  source = "./modules/compute"

  name                       = local.name
  tags                       = local.tags
  environment                = var.environment
  region                     = var.region
  vpc_id                     = module.network.vpc_id
  public_subnet_ids          = module.network.public_subnet_ids
  private_subnet_ids         = module.network.private_subnet_ids
  alb_subnet_cidrs           = join(",", var.public_subnet_cidrs) # the API's trusted proxies
  kms_key_arn                = module.security.kms_key_arn
  alb_security_group_id      = module.security.alb_security_group_id
  api_security_group_id      = module.security.api_security_group_id
  pipeline_security_group_id = module.security.pipeline_security_group_id
  gpu_security_group_id      = module.security.gpu_security_group_id
  alb_certificate_arn        = module.storage.origin_certificate_arn
  logs_bucket_name           = module.storage.bucket_names["logs"]
  images_bucket_name         = module.storage.bucket_names["images"]
  models_bucket_name         = module.storage.bucket_names["models"]
  cdn_domain_name            = var.domain_name
  cloudfront_public_key_id   = module.storage.cloudfront_public_key_id
  stripe_price_ids           = var.stripe_price_ids
  msk_bootstrap_brokers      = module.data.msk_bootstrap_brokers_sasl_iam
  efs_file_system_id         = module.data.efs_file_system_id
  efs_access_point_id        = module.data.efs_access_point_id
  database_secret_arn        = module.data.database_secret_arn
  redis_secret_arn           = module.data.redis_secret_arn
  stripe_secret_arn          = module.identity.stripe_secret_arn
  cloudfront_signing_secret  = module.identity.cloudfront_signing_secret_arn
  personal_data_secret_arn   = module.identity.personal_data_secret_arn
  cognito_issuer             = module.identity.cognito_issuer
  cognito_client_id          = module.identity.cognito_web_client_id
  execution_role_arns        = module.identity.execution_role_arns
  task_role_arns             = module.identity.task_role_arns
  gpu_instance_profile_names = module.identity.gpu_instance_profile_names
  image_tag                  = var.image_tag
  api_cpu                    = var.api_cpu
  api_memory                 = var.api_memory
  api_min_count              = var.api_min_count
  api_max_count              = var.api_max_count
  pipeline_cpu               = var.pipeline_cpu
  pipeline_memory            = var.pipeline_memory
  gpu_tiers                  = { for tier, t in var.gpu_tiers : tier => t if t.enabled }
  gpu_root_volume_size       = var.gpu_root_volume_size
  log_retention_days         = var.log_retention_days
}

module "observability" {
  source = "./modules/observability"

  name                    = local.name
  tags                    = local.tags
  environment             = var.environment
  kms_key_arn             = module.security.kms_key_arn
  alarm_email             = var.alarm_email
  alb_arn_suffix          = module.compute.alb_arn_suffix
  target_group_arn_suffix = module.compute.api_target_group_arn_suffix
  db_instance_id          = module.data.db_instance_id
  db_max_connections      = var.db_max_connections
  redis_replication_group = module.data.redis_replication_group_id
  redis_member_count      = module.data.redis_member_count
  images_bucket_name      = module.storage.bucket_names["images"]
  s3_request_metrics_id   = module.storage.request_metrics_filter_id
  lag_metric_namespace    = module.compute.lag_metric_namespace
}
