terraform {
  # OpenTofu >= 1.6 or Terraform >= 1.6 (the configuration uses no feature beyond 1.6).
  required_version = ">= 1.6.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.80"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }

  # Partial configuration: `tofu init -backend-config=envs/<env>.backend.hcl` supplies the
  # bucket, key and lock table (see docs/DEPLOY.md, step 2).
  backend "s3" {}
}
