output "bucket_names" {
  description = "Bucket names by role: images, models, frontend, logs."
  value       = { for k, b in aws_s3_bucket.this : k => b.bucket }

  # The ALB checks at creation that it may write its access logs: policies first.
  depends_on = [aws_s3_bucket_policy.this]
}

output "bucket_arns" {
  description = "Bucket ARNs by role."
  value       = { for k, b in aws_s3_bucket.this : k => b.arn }
}

output "request_metrics_filter_id" {
  description = "Request-metrics filter of the images bucket (FilterId dimension)."
  value       = aws_s3_bucket_metric.images.name
}

output "zone_id" {
  description = "Route 53 hosted zone."
  value       = aws_route53_zone.main.zone_id
}

output "name_servers" {
  description = "Name servers to delegate the domain to."
  value       = aws_route53_zone.main.name_servers
}

output "origin_certificate_arn" {
  description = "Validated certificate of origin.<domain> for the ALB."
  value       = aws_acm_certificate_validation.origin.certificate_arn
}

output "cloudfront_distribution_id" {
  description = "CloudFront distribution (invalidations after a frontend deploy)."
  value       = aws_cloudfront_distribution.main.id
}

output "cloudfront_domain_name" {
  description = "CloudFront domain name."
  value       = aws_cloudfront_distribution.main.domain_name
}

output "cloudfront_key_group_id" {
  description = "Key group trusted for /users/* (signed image URLs)."
  value       = aws_cloudfront_key_group.signer.id
}

output "cloudfront_public_key_id" {
  description = "Key pair id the API puts into signed URLs."
  value       = aws_cloudfront_public_key.signer.id
}
