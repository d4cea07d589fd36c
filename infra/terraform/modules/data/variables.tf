variable "name" {
  description = "Name prefix."
  type        = string
}

variable "tags" {
  description = "Tags of every resource."
  type        = map(string)
}

variable "data_subnet_ids" {
  description = "Data subnets (three AZs: MSK needs one per broker)."
  type        = list(string)
}

variable "efs_subnet_ids" {
  description = "Data subnets that get an EFS mount target (the GPU workers' AZs)."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "Customer-managed key of every store."
  type        = string
}

variable "db_security_group_id" {
  description = "Security group of RDS."
  type        = string
}

variable "redis_security_group_id" {
  description = "Security group of ElastiCache."
  type        = string
}

variable "msk_security_group_id" {
  description = "Security group of MSK."
  type        = string
}

variable "efs_security_group_id" {
  description = "Security group of EFS."
  type        = string
}

variable "db_instance_class" {
  description = "RDS instance class."
  type        = string
}

variable "db_allocated_storage" {
  description = "Initial gp3 storage in GiB."
  type        = number
}

variable "db_max_allocated_storage" {
  description = "Storage autoscaling ceiling in GiB."
  type        = number
}

variable "db_max_connections" {
  description = "PostgreSQL max_connections."
  type        = number
}

variable "redis_node_type" {
  description = "ElastiCache node type."
  type        = string
}

variable "msk_instance_type" {
  description = "MSK broker instance type."
  type        = string
}

variable "msk_ebs_volume_size" {
  description = "EBS storage per broker in GiB."
  type        = number
}

variable "log_retention_days" {
  description = "Retention of the stores' log groups."
  type        = number
}
