# Terraform for ecom-rerank on AWS: network, EKS cluster (CPU + GPU node groups), managed PostgreSQL 16 (RDS),
# and the S3 bucket behind RERANK_HOME. One file per concern; `terraform fmt -check` is run by the tests.
terraform {
  required_version = ">= 1.6"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.60"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      project = "ecom-rerank"
      env     = var.environment
    }
  }
}
