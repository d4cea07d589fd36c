# Cognito (users sign in; the API verifies RS256 JWTs against the pool's JWKS) and the
# secrets that are not connection strings: Stripe keys, the Cognito server client, and the
# private key that signs CloudFront image URLs. Stripe keys and the signing key are put in
# by the operator (docs/DEPLOY.md, step 6), never through Terraform state.

resource "aws_cognito_user_pool" "main" {
  name                     = var.name
  username_attributes      = ["email"]
  auto_verified_attributes = ["email"]
  deletion_protection      = "ACTIVE"
  mfa_configuration        = "OPTIONAL"

  software_token_mfa_configuration {
    enabled = true
  }

  password_policy {
    minimum_length                   = 12
    require_lowercase                = true
    require_uppercase                = true
    require_numbers                  = true
    require_symbols                  = false
    temporary_password_validity_days = 3
  }

  account_recovery_setting {
    recovery_mechanism {
      name     = "verified_email"
      priority = 1
    }
  }

  admin_create_user_config {
    allow_admin_create_user_only = false
  }

  tags = var.tags
}

# Members get `cognito:groups: ["admin"]` in their tokens: the admin endpoints check it.
resource "aws_cognito_user_group" "admin" {
  name         = "admin"
  user_pool_id = aws_cognito_user_pool.main.id
  description  = "Operators: tester plans, credit grants, ledger tools"
}

resource "aws_cognito_user_pool_domain" "main" {
  domain       = var.name
  user_pool_id = aws_cognito_user_pool.main.id
}

# The web app: public client (no secret), authorization code flow with PKCE.
resource "aws_cognito_user_pool_client" "web" {
  name                                 = "${var.name}-web"
  user_pool_id                         = aws_cognito_user_pool.main.id
  generate_secret                      = false
  prevent_user_existence_errors        = "ENABLED"
  explicit_auth_flows                  = ["ALLOW_USER_SRP_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"]
  allowed_oauth_flows_user_pool_client = true
  allowed_oauth_flows                  = ["code"]
  allowed_oauth_scopes                 = ["openid", "email", "profile"]
  supported_identity_providers         = ["COGNITO"]
  callback_urls                        = ["https://${var.domain_name}/auth/callback"]
  logout_urls                          = ["https://${var.domain_name}/"]
  access_token_validity                = 60
  id_token_validity                    = 60
  refresh_token_validity               = 30

  token_validity_units {
    access_token  = "minutes"
    id_token      = "minutes"
    refresh_token = "days"
  }
}

# Server-side client (admin CLI, end-to-end checks): confidential, its secret in Secrets Manager.
resource "aws_cognito_user_pool_client" "server" {
  name                          = "${var.name}-server"
  user_pool_id                  = aws_cognito_user_pool.main.id
  generate_secret               = true
  prevent_user_existence_errors = "ENABLED"
  explicit_auth_flows           = ["ALLOW_ADMIN_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"]
}

locals {
  cognito_issuer = "https://cognito-idp.${var.region}.amazonaws.com/${aws_cognito_user_pool.main.id}"
}

resource "aws_secretsmanager_secret" "cognito" {
  # checkov:skip=CKV2_AWS_57:A Cognito client secret cannot be rotated in place (a new client is created and swapped); manual runbook step.
  name                    = "${var.name}/cognito"
  description             = "Cognito server client: {user_pool_id, client_id, client_secret, issuer}"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = 30

  tags = var.tags
}

resource "aws_secretsmanager_secret_version" "cognito" {
  secret_id = aws_secretsmanager_secret.cognito.id
  secret_string = jsonencode({
    user_pool_id  = aws_cognito_user_pool.main.id
    client_id     = aws_cognito_user_pool_client.server.id
    client_secret = aws_cognito_user_pool_client.server.client_secret
    issuer        = local.cognito_issuer
  })
}

resource "aws_secretsmanager_secret" "stripe" {
  # checkov:skip=CKV2_AWS_57:Stripe keys are rolled in the Stripe dashboard, then put here by the operator; no rotation Lambda can do that.
  name                    = "${var.name}/stripe"
  description             = "Stripe: {api_key, webhook_secret}; value put in by the operator"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = 30

  tags = var.tags
}

resource "aws_secretsmanager_secret" "personal_data" {
  # checkov:skip=CKV2_AWS_57:The key-encryption key wraps every user's data key; rotating it means re-wrapping them all (infra/personal_keys.py), a runbook step, not a Lambda's.
  name                    = "${var.name}/personal-data"
  description             = "Key-encryption key of the users' data keys (sealed prompts): {kek}, base64 of 32 random bytes; value put in by the operator"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = 30

  tags = var.tags
}

resource "aws_secretsmanager_secret" "cloudfront_signing" {
  # checkov:skip=CKV2_AWS_57:Rotating the signing key means adding a second public key to the key group first; manual runbook step.
  name                    = "${var.name}/cloudfront-signing"
  description             = "Private key (PEM) of the CloudFront image URL signer: {private_key}"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = 30

  tags = var.tags
}
