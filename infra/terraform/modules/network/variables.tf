variable "name" {
  description = "Name prefix."
  type        = string
}

variable "tags" {
  description = "Tags of every resource."
  type        = map(string)
}

variable "vpc_cidr" {
  description = "VPC CIDR."
  type        = string
}

variable "availability_zones" {
  description = "The two AZs of the public, private and first two data subnets."
  type        = list(string)
}

variable "msk_third_availability_zone" {
  description = "AZ of the third data subnet (MSK's third broker)."
  type        = string
}

variable "public_subnet_cidrs" {
  description = "Public subnets, one per AZ."
  type        = list(string)
}

variable "private_subnet_cidrs" {
  description = "Private subnets, one per AZ."
  type        = list(string)
}

variable "data_subnet_cidrs" {
  description = "Data subnets: one per AZ, then the third MSK subnet."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "KMS key of the flow-log log group."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the flow-log log group."
  type        = number
}
