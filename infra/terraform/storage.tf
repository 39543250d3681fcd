# RERANK_HOME: Parquet snapshots, models and reports, one POSIX folder that every Airflow task pod and Dask
# worker mounts (EFS, ReadWriteMany through the EFS CSI driver, storage class `efs`). The published lists
# live in Postgres; RERANK_HOME holds a run's intermediate files. Airflow's task logs go to S3.
resource "aws_efs_file_system" "rerank_home" {
  creation_token   = "${local.name}-home"
  encrypted        = true
  performance_mode = "generalPurpose"
  throughput_mode  = "elastic"

  lifecycle_policy {
    transition_to_ia = "AFTER_14_DAYS"
  }
}

resource "aws_security_group" "efs" {
  name        = "${local.name}-efs"
  description = "NFS from the EKS nodes only"
  vpc_id      = module.vpc.vpc_id

  ingress {
    description     = "NFS from the cluster's nodes"
    from_port       = 2049
    to_port         = 2049
    protocol        = "tcp"
    security_groups = [module.eks.node_security_group_id]
  }
}

resource "aws_efs_mount_target" "rerank_home" {
  for_each        = toset(module.vpc.private_subnets)
  file_system_id  = aws_efs_file_system.rerank_home.id
  subnet_id       = each.value
  security_groups = [aws_security_group.efs.id]
}

resource "aws_s3_bucket" "logs" {
  bucket = "${local.name}-airflow-logs"
}

resource "aws_s3_bucket_public_access_block" "logs" {
  bucket                  = aws_s3_bucket.logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_lifecycle_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id

  rule {
    id     = "expire-task-logs"
    status = "Enabled"

    filter {
      prefix = ""
    }

    expiration {
      days = 30
    }
  }
}
