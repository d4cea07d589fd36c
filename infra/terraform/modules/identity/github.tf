# The release pipeline (.github/workflows/release.yml) assumes this role through GitHub's OIDC
# provider: no long-lived keys. Only jobs of var.github_repository that run in the GitHub
# environment var.github_environment may assume it (the `sub` claim names the environment, so a
# pull request or another branch's job without that environment is refused); the production
# environment's required reviewers are what gate a production release.
#
# What the role may do, and nothing else (docs/DEPLOY.md, "Release pipeline"):
#   - push and pull this environment's two ECR repositories (and pull the repositories named
#     in var.github_deploy_pull_repository_arns: production pulls staging's image by digest);
#   - register task definitions, roll this cluster's services onto them, pass their roles;
#   - add launch template versions to this environment's GPU launch templates and start or
#     cancel instance refreshes of its GPU auto-scaling groups (which checks that the caller
#     could launch from the template itself).
# The end-to-end check signs its test user in as the web app does (SRP on the public web
# client): no AWS permission.
# Created only when var.github_repository is set. The OIDC provider is one per account: when
# the other environment's state already created it, pass its ARN in var.github_oidc_provider_arn.

locals {
  github_enabled = var.github_repository != ""
  github_oidc_provider_arn = (
    var.github_oidc_provider_arn != "" ? var.github_oidc_provider_arn
    : one(aws_iam_openid_connect_provider.github[*].arn)
  )
  gpu_asg_arn_pattern = "arn:aws:autoscaling:${var.region}:${local.account_id}:autoScalingGroup:*:autoScalingGroupName/${var.name}-gpu-*"
}

resource "aws_iam_openid_connect_provider" "github" {
  count = local.github_enabled && var.github_oidc_provider_arn == "" ? 1 : 0

  url            = "https://token.actions.githubusercontent.com"
  client_id_list = ["sts.amazonaws.com"]
  # IAM trusts GitHub's OIDC certificate through its own CA store; the argument is kept for
  # providers that still require it.
  thumbprint_list = ["6938fd4d98bab03faadb97b34396831e3780aea1", "1c58a3a8518e8759bf075b76b750d4f2df264fcd"]

  tags = var.tags
}

data "aws_iam_policy_document" "github_assume" {
  # checkov:skip=CKV_AWS_358:sub is repo:<owner/name>:environment:<env>, one repository and one environment; checkov evaluates the empty default, for which no role is created.
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [coalesce(local.github_oidc_provider_arn, "arn:aws:iam::${local.account_id}:oidc-provider/token.actions.githubusercontent.com")]
    }

    condition {
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:aud"
      values   = ["sts.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:sub"
      values   = ["repo:${var.github_repository}:environment:${var.github_environment}"]
    }
  }
}

data "aws_iam_policy_document" "github_deploy" {
  # checkov:skip=CKV_AWS_356:GetAuthorizationToken, RegisterTaskDefinition, DescribeTaskDefinition, DescribeLaunchTemplateVersions and the Auto Scaling Describe calls support no resource ARNs.
  # checkov:skip=CKV_AWS_111:ecs:RegisterTaskDefinition supports no resource ARNs; every other write is scoped to this environment's repositories, services, launch templates and groups.
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # no resource-level permissions
  }

  statement {
    sid = "PushAndPullOwnImages"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:CompleteLayerUpload",
      "ecr:DescribeImages",
      "ecr:GetDownloadUrlForLayer",
      "ecr:InitiateLayerUpload",
      "ecr:PutImage",
      "ecr:UploadLayerPart",
    ]
    resources = values(var.ecr_repository_arns)
  }

  dynamic "statement" {
    for_each = length(var.github_deploy_pull_repository_arns) > 0 ? [1] : []

    content {
      sid = "PullPromotedImages"
      actions = [
        "ecr:BatchCheckLayerAvailability",
        "ecr:BatchGetImage",
        "ecr:DescribeImages",
        "ecr:GetDownloadUrlForLayer",
      ]
      resources = var.github_deploy_pull_repository_arns
    }
  }

  statement {
    sid       = "ReadAndRegisterTaskDefinitions"
    actions   = ["ecs:DescribeTaskDefinition", "ecs:RegisterTaskDefinition"]
    resources = ["*"] # neither supports resource-level permissions
  }

  statement {
    sid       = "TagOwnTaskDefinitions"
    actions   = ["ecs:TagResource"]
    resources = ["arn:aws:ecs:${var.region}:${local.account_id}:task-definition/${var.name}-*:*"]

    condition {
      test     = "StringEquals"
      variable = "ecs:CreateAction"
      values   = ["RegisterTaskDefinition"]
    }
  }

  statement {
    sid       = "RollOwnServices"
    actions   = ["ecs:DescribeServices", "ecs:UpdateService"]
    resources = ["arn:aws:ecs:${var.region}:${local.account_id}:service/${var.name}/*"]
  }

  statement {
    sid       = "PassOwnTaskRoles"
    actions   = ["iam:PassRole"]
    resources = concat([for r in aws_iam_role.execution : r.arn], [for r in aws_iam_role.task : r.arn])

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }

  statement {
    sid       = "PassGpuInstanceRoles"
    actions   = ["iam:PassRole"]
    resources = [for r in aws_iam_role.gpu : r.arn]

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ec2.amazonaws.com"]
    }
  }

  statement {
    sid = "DescribeGpuRollout"
    actions = [
      "autoscaling:DescribeAutoScalingGroups",
      "autoscaling:DescribeInstanceRefreshes",
      "ec2:DescribeLaunchTemplateVersions",
    ]
    resources = ["*"] # Describe calls support no resource-level permissions
  }

  # The GPU launch templates carry the environment's tags (modules/compute/gpu.tf); their ARNs
  # hold only generated ids, so the tags are what scope this statement.
  statement {
    sid       = "NewGpuLaunchTemplateVersions"
    actions   = ["ec2:CreateLaunchTemplateVersion", "ec2:ModifyLaunchTemplate"]
    resources = ["arn:aws:ec2:${var.region}:${local.account_id}:launch-template/*"]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/Project"
      values   = [var.tags["Project"]]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/Environment"
      values   = [var.tags["Environment"]]
    }

    condition {
      test     = "Null"
      variable = "aws:ResourceTag/GpuTier"
      values   = ["false"]
    }
  }

  # StartInstanceRefresh checks that the caller itself could launch from the group's launch
  # template: RunInstances through one of this environment's GPU templates, the tags of its
  # tag specifications, and iam:PassRole of the instance profile's role (above).
  statement {
    sid       = "LaunchFromGpuLaunchTemplates"
    actions   = ["ec2:RunInstances"]
    resources = ["arn:aws:ec2:${var.region}:${local.account_id}:launch-template/*"]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/Project"
      values   = [var.tags["Project"]]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/Environment"
      values   = [var.tags["Environment"]]
    }

    condition {
      test     = "Null"
      variable = "aws:ResourceTag/GpuTier"
      values   = ["false"]
    }
  }

  statement {
    sid     = "LaunchResourcesOnlyThroughALaunchTemplate"
    actions = ["ec2:RunInstances"]
    resources = [
      "arn:aws:ec2:${var.region}:${local.account_id}:instance/*",
      "arn:aws:ec2:${var.region}:${local.account_id}:volume/*",
      "arn:aws:ec2:${var.region}:${local.account_id}:network-interface/*",
      "arn:aws:ec2:${var.region}:${local.account_id}:subnet/*",
      "arn:aws:ec2:${var.region}:${local.account_id}:security-group/*",
      "arn:aws:ec2:${var.region}::image/*",
    ]

    condition {
      test     = "ArnLike"
      variable = "ec2:LaunchTemplate"
      values   = ["arn:aws:ec2:${var.region}:${local.account_id}:launch-template/*"]
    }
  }

  statement {
    sid     = "TagGpuInstancesAtLaunch"
    actions = ["ec2:CreateTags"]
    resources = [
      "arn:aws:ec2:${var.region}:${local.account_id}:instance/*",
      "arn:aws:ec2:${var.region}:${local.account_id}:volume/*",
      "arn:aws:ec2:${var.region}:${local.account_id}:network-interface/*",
    ]

    condition {
      test     = "StringEquals"
      variable = "ec2:CreateAction"
      values   = ["RunInstances"]
    }
  }

  statement {
    sid       = "RefreshGpuGroups"
    actions   = ["autoscaling:StartInstanceRefresh", "autoscaling:CancelInstanceRefresh"]
    resources = [local.gpu_asg_arn_pattern]
  }
}

resource "aws_iam_role" "github_deploy" {
  count = local.github_enabled ? 1 : 0

  name                 = "${var.name}-github-deploy"
  description          = "Release pipeline of ${var.github_repository} (GitHub environment ${var.github_environment})"
  assume_role_policy   = data.aws_iam_policy_document.github_assume.json
  max_session_duration = 7200 # a production release with a GPU refresh and a rollback

  tags = var.tags
}

resource "aws_iam_role_policy" "github_deploy" {
  count = local.github_enabled ? 1 : 0

  name   = "release-least-privilege"
  role   = aws_iam_role.github_deploy[0].id
  policy = data.aws_iam_policy_document.github_deploy.json
}
