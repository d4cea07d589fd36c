# Staging: the production shape (Multi-AZ, 3 brokers, replica) on the smallest sizes.
# tofu plan -var-file=envs/staging.tfvars -var image_tag=<release>

environment = "staging"
region      = "ap-northeast-2"

tags = {
  CostCenter = "pinksea-staging"
  Owner      = "platform"
}

availability_zones          = ["ap-northeast-2a", "ap-northeast-2c"]
msk_third_availability_zone = "ap-northeast-2b"
vpc_cidr                    = "10.0.0.0/16"
public_subnet_cidrs         = ["10.0.1.0/24", "10.0.2.0/24"]
private_subnet_cidrs        = ["10.0.11.0/24", "10.0.12.0/24"]
data_subnet_cidrs           = ["10.0.21.0/24", "10.0.22.0/24", "10.0.23.0/24"]

domain_name                = "staging.pinksea.example.com"
cloudfront_public_key_path = "keys/staging-cloudfront-signing.pub.pem"
alarm_email                = "oncall+staging@pinksea.example.com"

db_instance_class    = "db.t4g.medium"
db_allocated_storage = 20
db_max_connections   = 400
redis_node_type      = "cache.t4g.micro"
msk_instance_type    = "kafka.t3.small"
msk_ebs_volume_size  = 20

api_min_count = 2
api_max_count = 3

gpu_tiers = {
  basic = {
    enabled       = true
    instance_type = "g4dn.xlarge"
    min_size      = 1
    max_size      = 10
    spot          = true
  }
  high_performance = {
    enabled       = true
    instance_type = "g5.xlarge"
    min_size      = 1
    max_size      = 10
    spot          = true
  }
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
