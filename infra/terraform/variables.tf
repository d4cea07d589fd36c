variable "project" {
  description = "Name prefix of every resource."
  type        = string
  default     = "pinksea"
}

variable "environment" {
  description = "Deployment environment."
  type        = string

  validation {
    condition     = contains(["staging", "production"], var.environment)
    error_message = "environment must be staging or production."
  }
}

variable "region" {
  description = "AWS region of everything but the CloudFront certificate and WAF (us-east-1)."
  type        = string
  default     = "ap-northeast-2"
}

variable "tags" {
  description = "Extra tags merged into the default tags of every resource."
  type        = map(string)
  default     = {}
}

# --- network (the operator's subnet plan) --------------------------------------------------------

variable "availability_zones" {
  description = "The two AZs of the public, private and first two data subnets."
  type        = list(string)
  default     = ["ap-northeast-2a", "ap-northeast-2c"]
}

variable "msk_third_availability_zone" {
  description = "Third AZ, used only by the third data subnet (MSK needs one broker per AZ for 3 brokers)."
  type        = string
  default     = "ap-northeast-2b"
}

variable "vpc_cidr" {
  description = "VPC CIDR."
  type        = string
  default     = "10.0.0.0/16"
}

variable "public_subnet_cidrs" {
  description = "Public subnets (ALB, one NAT gateway each), one per AZ."
  type        = list(string)
  default     = ["10.0.1.0/24", "10.0.2.0/24"]
}

variable "private_subnet_cidrs" {
  description = "Private subnets (ECS services, GPU workers), one per AZ."
  type        = list(string)
  default     = ["10.0.11.0/24", "10.0.12.0/24"]
}

variable "data_subnet_cidrs" {
  description = "Data subnets (RDS, ElastiCache, MSK, EFS): one per AZ plus the third MSK subnet."
  type        = list(string)
  default     = ["10.0.21.0/24", "10.0.22.0/24", "10.0.23.0/24"]
}

# --- edge -----------------------------------------------------------------------------------

variable "domain_name" {
  description = "Public domain of this environment; a Route 53 hosted zone is created for it."
  type        = string
}

variable "cloudfront_public_key_path" {
  description = "PEM public key (relative to this directory) whose private half signs image URLs."
  type        = string
}

variable "stripe_price_ids" {
  description = "Stripe price id of each paid plan, from the Stripe dashboard of this environment's account (Products > the plan > its monthly price)."
  type        = map(string)

  validation {
    condition     = alltrue([for plan in ["starter", "pro", "studio"] : can(regex("^price_[A-Za-z0-9]+$", var.stripe_price_ids[plan]))])
    error_message = "stripe_price_ids needs a price_... id for starter, pro and studio."
  }
}

variable "cloudfront_price_class" {
  description = "CloudFront price class (PriceClass_200 includes Korea and Japan edges)."
  type        = string
  default     = "PriceClass_200"
}

# --- data stores ----------------------------------------------------------------------------

variable "db_instance_class" {
  description = "RDS PostgreSQL instance class."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_allocated_storage" {
  description = "Initial gp3 storage of RDS in GiB."
  type        = number
  default     = 50
}

variable "db_max_allocated_storage" {
  description = "Storage autoscaling ceiling of RDS in GiB."
  type        = number
  default     = 500
}

variable "db_max_connections" {
  description = "PostgreSQL max_connections (set in the parameter group; the alarm fires at 80% of it)."
  type        = number
  default     = 400
}

variable "redis_node_type" {
  description = "ElastiCache node type (primary and replica)."
  type        = string
  default     = "cache.t4g.small"
}

variable "msk_instance_type" {
  description = "MSK broker instance type (3 brokers)."
  type        = string
  default     = "kafka.t3.small"
}

variable "msk_ebs_volume_size" {
  description = "EBS storage per MSK broker in GiB."
  type        = number
  default     = 100
}

# --- compute --------------------------------------------------------------------------------

variable "image_tag" {
  description = "Tag of the pinksea and pinksea-gpu-worker images in ECR (immutable tags: a release)."
  type        = string
}

variable "api_cpu" {
  description = "Fargate CPU units of one API task."
  type        = number
  default     = 512
}

variable "api_memory" {
  description = "Fargate memory (MiB) of one API task."
  type        = number
  default     = 1024
}

variable "api_min_count" {
  description = "Minimum number of API tasks (one per AZ at least)."
  type        = number
  default     = 2
}

variable "api_max_count" {
  description = "Maximum number of API tasks (CPU target tracking)."
  type        = number
  default     = 6
}

variable "pipeline_cpu" {
  description = "Fargate CPU units of one pipeline task (relay, projections, scheduler, settler, expiry, lag metric)."
  type        = number
  default     = 256
}

variable "pipeline_memory" {
  description = "Fargate memory (MiB) of one pipeline task."
  type        = number
  default     = 512
}

variable "gpu_tiers" {
  description = "GPU auto-scaling group per tier, scaled on the consumer lag of its dispatch topic."
  type = map(object({
    enabled       = bool
    instance_type = string
    min_size      = number
    max_size      = number
    spot          = bool
  }))
  default = {
    basic = {
      enabled       = true
      instance_type = "g4dn.xlarge"
      min_size      = 1
      max_size      = 10
      spot          = false
    }
    high_performance = {
      enabled       = true
      instance_type = "g5.xlarge"
      min_size      = 1
      max_size      = 10
      spot          = false
    }
    dedicated = {
      enabled       = false
      instance_type = "p4d.24xlarge"
      min_size      = 1
      max_size      = 10
      spot          = false
    }
  }
}

variable "gpu_root_volume_size" {
  description = "Root EBS volume (gp3) of a GPU worker in GiB: image layers and the local model cache."
  type        = number
  default     = 150
}

# --- operations -----------------------------------------------------------------------------

variable "alarm_email" {
  description = "E-mail address subscribed to the alarm topic (confirm the subscription once)."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of every CloudWatch log group."
  type        = number
  default     = 365
}

# --- release pipeline (.github/workflows/release.yml, docs/DEPLOY.md "Release pipeline") ------

variable "github_repository" {
  description = "GitHub repository (owner/name) whose release pipeline may assume the deploy role through OIDC; empty: no role."
  type        = string
  default     = ""
}

variable "github_oidc_provider_arn" {
  description = "The account's GitHub OIDC provider when another state already created it; empty: create it."
  type        = string
  default     = ""
}

variable "github_deploy_pull_repository_arns" {
  description = "Production: staging's ECR repository ARNs, which the deploy role pulls the released digest from."
  type        = list(string)
  default     = []
}
