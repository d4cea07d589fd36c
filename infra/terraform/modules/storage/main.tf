# Object storage and the edge: S3 buckets (images, models, frontend, logs), CloudFront in
# front of all of it (signed URLs for images, the frontend, /api/* to the ALB), WAF on both
# CloudFront and the ALB, the Route 53 zone and ACM certificates.

data "aws_caller_identity" "current" {}

locals {
  # Buckets encrypted with the customer-managed key. The logs bucket uses SSE-S3 because
  # ALB access logs cannot be written to an SSE-KMS bucket.
  kms_buckets = toset(["images", "models", "frontend"])
  all_buckets = setunion(local.kms_buckets, ["logs"])

  origin_domain = "origin.${var.domain_name}"
}

# ============================================================================================
# S3
# ============================================================================================

resource "aws_s3_bucket" "this" {
  # checkov:skip=CKV_AWS_144:Single-region service by design; versioning plus the 30-day IA lifecycle is the recovery path (docs/DEPLOY.md). Cross-region replication doubles storage cost.
  # checkov:skip=CKV2_AWS_62:No consumer of S3 event notifications: the GPU workers report uploads over Kafka.
  for_each = local.all_buckets

  bucket = "${var.name}-${each.key}-${data.aws_caller_identity.current.account_id}"

  tags = merge(var.tags, { Name = "${var.name}-${each.key}", Contents = each.key })
}

resource "aws_s3_bucket_public_access_block" "this" {
  for_each = aws_s3_bucket.this

  bucket                  = each.value.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "this" {
  for_each = aws_s3_bucket.this

  bucket = each.value.id

  rule {
    # The logs bucket receives CloudFront standard logs, which are delivered through ACLs.
    object_ownership = each.key == "logs" ? "BucketOwnerPreferred" : "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "this" {
  for_each = aws_s3_bucket.this

  bucket = each.value.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  for_each = aws_s3_bucket.this

  bucket = each.value.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = contains(local.kms_buckets, each.key) ? "aws:kms" : "AES256"
      kms_master_key_id = contains(local.kms_buckets, each.key) ? var.kms_key_arn : null
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  for_each = aws_s3_bucket.this

  bucket = each.value.id

  rule {
    id     = "infrequent-access-after-30-days"
    status = "Enabled"

    filter {}

    transition {
      days          = 30
      storage_class = "STANDARD_IA"
    }

    noncurrent_version_transition {
      noncurrent_days = 30
      storage_class   = "STANDARD_IA"
    }

    noncurrent_version_expiration {
      noncurrent_days = 90
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  dynamic "rule" {
    for_each = each.key == "logs" ? [var.log_retention_days] : []

    content {
      id     = "expire-logs"
      status = "Enabled"

      filter {
        prefix = "access/"
      }

      expiration {
        days = rule.value
      }
    }
  }
}

resource "aws_s3_bucket_logging" "this" {
  for_each = { for k, b in aws_s3_bucket.this : k => b if k != "logs" }

  bucket        = each.value.id
  target_bucket = aws_s3_bucket.this["logs"].id
  target_prefix = "access/s3/${each.key}/"
}

# Request metrics (4xx, 5xx, AllRequests) of the images bucket feed the S3 error-rate alarm.
resource "aws_s3_bucket_metric" "images" {
  bucket = aws_s3_bucket.this["images"].id
  name   = "EntireBucket"
}

data "aws_elb_service_account" "current" {}

data "aws_iam_policy_document" "bucket" {
  for_each = aws_s3_bucket.this

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [each.value.arn, "${each.value.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  # CloudFront (origin access control) reads the frontend and the images.
  dynamic "statement" {
    for_each = contains(["images", "frontend"], each.key) ? [each.key] : []

    content {
      sid       = "CloudFrontReads"
      actions   = ["s3:GetObject"]
      resources = ["${each.value.arn}/*"]

      principals {
        type        = "Service"
        identifiers = ["cloudfront.amazonaws.com"]
      }

      condition {
        test     = "StringEquals"
        variable = "AWS:SourceArn"
        values   = [aws_cloudfront_distribution.main.arn]
      }
    }
  }

  # S3 server access logs of the other buckets.
  dynamic "statement" {
    for_each = each.key == "logs" ? [each.key] : []

    content {
      sid       = "S3WritesServerAccessLogs"
      actions   = ["s3:PutObject"]
      resources = ["${each.value.arn}/access/s3/*"]

      principals {
        type        = "Service"
        identifiers = ["logging.s3.amazonaws.com"]
      }

      condition {
        test     = "StringEquals"
        variable = "aws:SourceAccount"
        values   = [data.aws_caller_identity.current.account_id]
      }
    }
  }

  # The load balancer writes its access logs.
  dynamic "statement" {
    for_each = each.key == "logs" ? [each.key] : []

    content {
      sid       = "LoadBalancerWritesAccessLogs"
      actions   = ["s3:PutObject"]
      resources = ["${each.value.arn}/access/alb/AWSLogs/${data.aws_caller_identity.current.account_id}/*"]

      principals {
        type        = "AWS"
        identifiers = [data.aws_elb_service_account.current.arn]
      }
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  for_each = aws_s3_bucket.this

  bucket = each.value.id
  policy = data.aws_iam_policy_document.bucket[each.key].json

  depends_on = [aws_s3_bucket_public_access_block.this]
}

# ============================================================================================
# Route 53 and ACM
# ============================================================================================

resource "aws_route53_zone" "main" {
  # checkov:skip=CKV2_AWS_38:DNSSEC needs an asymmetric KMS key in us-east-1 and a DS record at the registrar; enabled by hand after delegation (docs/DEPLOY.md, step 11).
  # checkov:skip=CKV2_AWS_39:Query logging needs a log group in us-east-1; CloudFront and ALB access logs already record every request.
  name    = var.domain_name
  comment = "${var.name} public zone"

  tags = var.tags
}

# The CloudFront certificate (us-east-1) for the apex and www.
resource "aws_acm_certificate" "cdn" {
  provider = aws.us_east_1

  domain_name               = var.domain_name
  subject_alternative_names = ["www.${var.domain_name}"]
  validation_method         = "DNS"

  lifecycle {
    create_before_destroy = true
  }

  tags = var.tags
}

# The load balancer's certificate (origin.<domain>, in the service region): CloudFront
# connects to the ALB over HTTPS with this name.
resource "aws_acm_certificate" "origin" {
  domain_name       = local.origin_domain
  validation_method = "DNS"

  lifecycle {
    create_before_destroy = true
  }

  tags = var.tags
}

locals {
  validation_records = merge(
    { for o in aws_acm_certificate.cdn.domain_validation_options : o.domain_name => o },
    { for o in aws_acm_certificate.origin.domain_validation_options : o.domain_name => o },
  )
}

resource "aws_route53_record" "validation" {
  for_each = local.validation_records

  zone_id         = aws_route53_zone.main.zone_id
  name            = each.value.resource_record_name
  type            = each.value.resource_record_type
  records         = [each.value.resource_record_value]
  ttl             = 300
  allow_overwrite = true
}

resource "aws_acm_certificate_validation" "cdn" {
  provider = aws.us_east_1

  certificate_arn         = aws_acm_certificate.cdn.arn
  validation_record_fqdns = [for o in aws_acm_certificate.cdn.domain_validation_options : aws_route53_record.validation[o.domain_name].fqdn]
}

resource "aws_acm_certificate_validation" "origin" {
  certificate_arn         = aws_acm_certificate.origin.arn
  validation_record_fqdns = [for o in aws_acm_certificate.origin.domain_validation_options : aws_route53_record.validation[o.domain_name].fqdn]
}

resource "aws_route53_record" "origin" {
  zone_id = aws_route53_zone.main.zone_id
  name    = local.origin_domain
  type    = "A"

  alias {
    name                   = var.alb_dns_name
    zone_id                = var.alb_zone_id
    evaluate_target_health = true
  }
}

resource "aws_route53_record" "cdn" {
  for_each = toset([var.domain_name, "www.${var.domain_name}"])

  zone_id = aws_route53_zone.main.zone_id
  name    = each.value
  type    = "A"

  alias {
    name                   = aws_cloudfront_distribution.main.domain_name
    zone_id                = aws_cloudfront_distribution.main.hosted_zone_id
    evaluate_target_health = false
  }
}

# ============================================================================================
# SES: the domain identity the low-balance e-mails are sent from (`pinksea notify`, sender
# no-reply@<domain>; the notifier's IAM policy allows only that address), signed with Easy
# DKIM whose records live in this zone. DKIM alone aligns with the DMARC policy below (SES's
# default MAIL FROM is amazonses.com, so SPF does not align without a custom MAIL FROM).
# Leaving the SES sandbox is a support request, not an API call (docs/DEPLOY.md, step 11).
# ============================================================================================

resource "aws_sesv2_email_identity" "domain" {
  email_identity = var.domain_name

  tags = var.tags
}

resource "aws_route53_record" "ses_dkim" {
  count = 3 # Easy DKIM always publishes three tokens

  zone_id = aws_route53_zone.main.zone_id
  name    = "${aws_sesv2_email_identity.domain.dkim_signing_attributes[0].tokens[count.index]}._domainkey.${var.domain_name}"
  type    = "CNAME"
  ttl     = 600
  records = ["${aws_sesv2_email_identity.domain.dkim_signing_attributes[0].tokens[count.index]}.dkim.amazonses.com"]
}

resource "aws_route53_record" "dmarc" {
  zone_id = aws_route53_zone.main.zone_id
  name    = "_dmarc.${var.domain_name}"
  type    = "TXT"
  ttl     = 600
  records = ["v=DMARC1; p=quarantine; adkim=s"]
}

# ============================================================================================
# WAF in front of CloudFront (scope CLOUDFRONT lives in us-east-1); the ALB's web ACL is in
# modules/compute next to the load balancer.
# ============================================================================================

resource "aws_wafv2_web_acl" "cloudfront" {
  provider = aws.us_east_1

  name        = "${var.name}-cloudfront"
  description = "Managed rule groups and a per-IP rate limit in front of CloudFront"
  scope       = "CLOUDFRONT"

  default_action {
    allow {}
  }

  # OWASP-style common attacks
  rule {
    name     = "AWSManagedRulesCommonRuleSet"
    priority = 10

    override_action {
      none {}
    }

    statement {
      managed_rule_group_statement {
        name        = "AWSManagedRulesCommonRuleSet"
        vendor_name = "AWS"
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-cf-AWSManagedRulesCommonRuleSet"
      sampled_requests_enabled   = true
    }
  }

  # known bad inputs, Log4j (CVE-2021-44228) included
  rule {
    name     = "AWSManagedRulesKnownBadInputsRuleSet"
    priority = 20

    override_action {
      none {}
    }

    statement {
      managed_rule_group_statement {
        name        = "AWSManagedRulesKnownBadInputsRuleSet"
        vendor_name = "AWS"
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-cf-AWSManagedRulesKnownBadInputsRuleSet"
      sampled_requests_enabled   = true
    }
  }

  # IPs with a bad reputation
  rule {
    name     = "AWSManagedRulesAmazonIpReputationList"
    priority = 30

    override_action {
      none {}
    }

    statement {
      managed_rule_group_statement {
        name        = "AWSManagedRulesAmazonIpReputationList"
        vendor_name = "AWS"
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-cf-AWSManagedRulesAmazonIpReputationList"
      sampled_requests_enabled   = true
    }
  }

  rule {
    name     = "rate-limit-per-ip"
    priority = 100

    action {
      block {}
    }

    statement {
      rate_based_statement {
        limit              = 2000 # requests per 5 minutes per IP
        aggregate_key_type = "IP"
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-cf-rate-limit"
      sampled_requests_enabled   = true
    }
  }

  visibility_config {
    cloudwatch_metrics_enabled = true
    metric_name                = "${var.name}-cloudfront"
    sampled_requests_enabled   = true
  }

  tags = var.tags
}

# WAF logs go to CloudWatch Logs; the log group name must start with aws-waf-logs-.
resource "aws_cloudwatch_log_group" "waf_cloudfront" {
  # checkov:skip=CKV_AWS_158:A CloudFront web ACL logs to us-east-1, where the customer key does not exist; CloudWatch Logs still encrypts it with an AWS-owned key.
  provider = aws.us_east_1

  name              = "aws-waf-logs-${var.name}-cloudfront"
  retention_in_days = var.log_retention_days

  tags = var.tags
}

resource "aws_wafv2_web_acl_logging_configuration" "cloudfront" {
  provider = aws.us_east_1

  resource_arn            = aws_wafv2_web_acl.cloudfront.arn
  log_destination_configs = [aws_cloudwatch_log_group.waf_cloudfront.arn]
}

# ============================================================================================
# CloudFront: frontend (default), /users/* (images, signed URLs), /api/* (the ALB)
# ============================================================================================

resource "aws_cloudfront_public_key" "signer" {
  name        = "${var.name}-image-signer"
  comment     = "Verifies the API's signed image URLs"
  encoded_key = file(var.cloudfront_public_key_path)
}

resource "aws_cloudfront_key_group" "signer" {
  name    = "${var.name}-image-signers"
  comment = "Keys trusted for /users/* (the images)"
  items   = [aws_cloudfront_public_key.signer.id]
}

resource "aws_cloudfront_origin_access_control" "s3" {
  name                              = "${var.name}-s3"
  description                       = "CloudFront signs its requests to the images and frontend buckets"
  origin_access_control_origin_type = "s3"
  signing_behavior                  = "always"
  signing_protocol                  = "sigv4"
}

data "aws_cloudfront_cache_policy" "optimized" {
  name = "Managed-CachingOptimized"
}

data "aws_cloudfront_cache_policy" "disabled" {
  name = "Managed-CachingDisabled"
}

data "aws_cloudfront_origin_request_policy" "all_viewer_except_host" {
  name = "Managed-AllViewerExceptHostHeader"
}

resource "aws_cloudfront_response_headers_policy" "security" {
  name    = "${var.name}-security-headers"
  comment = "HSTS, no sniffing, frame denial, strict referrer"

  security_headers_config {
    strict_transport_security {
      access_control_max_age_sec = 31536000
      include_subdomains         = true
      preload                    = true
      override                   = true
    }

    content_type_options {
      override = true
    }

    frame_options {
      frame_option = "DENY"
      override     = true
    }

    referrer_policy {
      referrer_policy = "strict-origin-when-cross-origin"
      override        = true
    }

    xss_protection {
      protection = true
      mode_block = true
      override   = true
    }
  }
}

# /api/v1/jobs at the edge is /v1/jobs at the API: the prefix only routes.
resource "aws_cloudfront_function" "strip_api_prefix" {
  name    = "${var.name}-strip-api-prefix"
  runtime = "cloudfront-js-2.0"
  comment = "Removes the /api prefix before the request reaches the ALB"
  publish = true
  code    = <<-JS
    function handler(event) {
      var request = event.request;
      request.uri = request.uri.replace(/^\/api(?=\/|$)/, "") || "/";
      return request;
    }
  JS
}

resource "aws_cloudfront_distribution" "main" {
  # checkov:skip=CKV_AWS_310:Origin failover needs a second copy of each origin (a replica bucket, a second ALB); single-region by design.
  # checkov:skip=CKV_AWS_374:Geo restriction is a product decision; the service sells worldwide.
  # checkov:skip=CKV2_AWS_47:The web ACL has AWSManagedRulesKnownBadInputsRuleSet (Log4JRCE); the check also demands AWSManagedRulesAnonymousIpList, which would block VPN users and API clients on cloud hosts.
  enabled             = true
  is_ipv6_enabled     = true
  comment             = "${var.name}: frontend, signed images, /api"
  aliases             = [var.domain_name, "www.${var.domain_name}"]
  default_root_object = "index.html"
  price_class         = var.cloudfront_price_class
  web_acl_id          = aws_wafv2_web_acl.cloudfront.arn
  http_version        = "http2and3"

  origin {
    origin_id                = "frontend"
    domain_name              = aws_s3_bucket.this["frontend"].bucket_regional_domain_name
    origin_access_control_id = aws_cloudfront_origin_access_control.s3.id
  }

  origin {
    origin_id                = "images"
    domain_name              = aws_s3_bucket.this["images"].bucket_regional_domain_name
    origin_access_control_id = aws_cloudfront_origin_access_control.s3.id
  }

  origin {
    origin_id   = "api"
    domain_name = local.origin_domain

    custom_origin_config {
      http_port              = 80
      https_port             = 443
      origin_protocol_policy = "https-only"
      origin_ssl_protocols   = ["TLSv1.2"]
    }
  }

  default_cache_behavior {
    target_origin_id           = "frontend"
    viewer_protocol_policy     = "redirect-to-https"
    allowed_methods            = ["GET", "HEAD", "OPTIONS"]
    cached_methods             = ["GET", "HEAD"]
    compress                   = true
    cache_policy_id            = data.aws_cloudfront_cache_policy.optimized.id
    response_headers_policy_id = aws_cloudfront_response_headers_policy.security.id
  }

  # Generated images: only with a URL signed by the API (trusted key group).
  ordered_cache_behavior {
    path_pattern               = "/users/*"
    target_origin_id           = "images"
    viewer_protocol_policy     = "https-only"
    allowed_methods            = ["GET", "HEAD"]
    cached_methods             = ["GET", "HEAD"]
    compress                   = false
    cache_policy_id            = data.aws_cloudfront_cache_policy.optimized.id
    response_headers_policy_id = aws_cloudfront_response_headers_policy.security.id
    trusted_key_groups         = [aws_cloudfront_key_group.signer.id]
  }

  # The API: never cached, every viewer header but Host forwarded.
  ordered_cache_behavior {
    path_pattern               = "/api/*"
    target_origin_id           = "api"
    viewer_protocol_policy     = "https-only"
    allowed_methods            = ["GET", "HEAD", "OPTIONS", "PUT", "POST", "PATCH", "DELETE"]
    cached_methods             = ["GET", "HEAD"]
    compress                   = true
    cache_policy_id            = data.aws_cloudfront_cache_policy.disabled.id
    origin_request_policy_id   = data.aws_cloudfront_origin_request_policy.all_viewer_except_host.id
    response_headers_policy_id = aws_cloudfront_response_headers_policy.security.id

    function_association {
      event_type   = "viewer-request"
      function_arn = aws_cloudfront_function.strip_api_prefix.arn
    }
  }

  restrictions {
    geo_restriction {
      restriction_type = "none"
    }
  }

  viewer_certificate {
    acm_certificate_arn      = aws_acm_certificate_validation.cdn.certificate_arn
    ssl_support_method       = "sni-only"
    minimum_protocol_version = "TLSv1.2_2021"
  }

  logging_config {
    bucket          = aws_s3_bucket.this["logs"].bucket_domain_name
    prefix          = "access/cloudfront/"
    include_cookies = false
  }

  tags = var.tags

  depends_on = [aws_s3_bucket_ownership_controls.this]
}
