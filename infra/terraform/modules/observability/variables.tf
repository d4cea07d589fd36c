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

variable "kms_key_arn" {
  description = "Customer-managed key of the alarm topic."
  type        = string
}

variable "alarm_email" {
  description = "E-mail subscribed to the alarm topic."
  type        = string
}

variable "alb_arn_suffix" {
  description = "Load balancer ARN suffix."
  type        = string
}

variable "target_group_arn_suffix" {
  description = "API target group ARN suffix."
  type        = string
}

variable "db_instance_id" {
  description = "RDS instance identifier."
  type        = string
}

variable "db_max_connections" {
  description = "PostgreSQL max_connections (the connections alarm fires at 80% of it)."
  type        = number
}

variable "redis_replication_group" {
  description = "ElastiCache replication group id."
  type        = string
}

variable "redis_member_count" {
  description = "Number of cache clusters in the replication group."
  type        = number
}

variable "images_bucket_name" {
  description = "Images bucket (its request metrics feed the S3 error-rate alarm)."
  type        = string
}

variable "s3_request_metrics_id" {
  description = "Request-metrics filter id of the images bucket."
  type        = string
}

variable "lag_metric_namespace" {
  description = "Namespace of the consumer-lag metric."
  type        = string
}
