# Production, sized for ~100 daily active users (cost table in docs/DEPLOY.md).
# tofu plan -var-file=envs/production.tfvars -var image_tag=<release>

environment = "production"
region      = "ap-northeast-2"

tags = {
  CostCenter = "pinksea-production"
  Owner      = "platform"
}

availability_zones          = ["ap-northeast-2a", "ap-northeast-2c"]
msk_third_availability_zone = "ap-northeast-2b"
vpc_cidr                    = "10.0.0.0/16"
public_subnet_cidrs         = ["10.0.1.0/24", "10.0.2.0/24"]
private_subnet_cidrs        = ["10.0.11.0/24", "10.0.12.0/24"]
data_subnet_cidrs           = ["10.0.21.0/24", "10.0.22.0/24", "10.0.23.0/24"]

domain_name                = "pinksea.example.com"
cloudfront_public_key_path = "keys/production-cloudfront-signing.pub.pem"
alarm_email                = "oncall@pinksea.example.com"

db_instance_class        = "db.t4g.medium"
db_allocated_storage     = 50
db_max_allocated_storage = 500
db_max_connections       = 400
redis_node_type          = "cache.t4g.small"
msk_instance_type        = "kafka.t3.small"
msk_ebs_volume_size      = 100

api_cpu       = 512
api_memory    = 1024
api_min_count = 2
api_max_count = 6

gpu_tiers = {
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
  # Enabled when an enterprise contract pays for it (one p4d.24xlarge is ~$24k/month).
  dedicated = {
    enabled       = false
    instance_type = "p4d.24xlarge"
    min_size      = 1
    max_size      = 10
    spot          = false
  }
}

log_retention_days = 365

# stripe_price_ids (required, no default): the monthly price of each paid plan in this
# environment's Stripe account (Dashboard > Products), passed with -var-file or -var:
#   stripe_price_ids = { starter = "price_...", pro = "price_...", studio = "price_..." }
