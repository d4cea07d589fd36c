variable "name" {
  description = "Name prefix."
  type        = string
}

variable "tags" {
  description = "Tags of every resource."
  type        = map(string)
}

variable "region" {
  description = "AWS region (for the KMS key policy's service principals)."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the security groups."
  type        = string
}
