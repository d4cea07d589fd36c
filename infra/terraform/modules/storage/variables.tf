variable "name" {
  description = "Name prefix."
  type        = string
}

variable "tags" {
  description = "Tags of every resource."
  type        = map(string)
}

variable "domain_name" {
  description = "Public domain: the frontend, /api and /images are served from it."
  type        = string
}

variable "kms_key_arn" {
  description = "Customer-managed key of the images, models and frontend buckets."
  type        = string
}

variable "alb_dns_name" {
  description = "DNS name of the load balancer (origin.<domain> points at it)."
  type        = string
}

variable "alb_zone_id" {
  description = "Hosted zone of the load balancer's DNS name."
  type        = string
}

variable "cloudfront_public_key_path" {
  description = "PEM public key of the image URL signer."
  type        = string
}

variable "cloudfront_price_class" {
  description = "CloudFront price class."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of access logs in the logs bucket, in days."
  type        = number
}
