# Managed PostgreSQL 16 for the shop's tables, the recsys schema and Airflow's metadata (database airflow).
# The parameter group carries the settings the publish needs (README "Running at scale").
resource "random_password" "db" {
  length  = 32
  special = false
}

# Passwords of the logins `rerank db migrate --create-logins` creates (infra/k8s/migrate-job.yaml): the
# pipeline's (rerank_pipeline in rerank_writer) and the readers' (rerank_app in rerank_reader).
resource "random_password" "pipeline_db" {
  length  = 32
  special = false
}

resource "random_password" "app_db" {
  length  = 32
  special = false
}

resource "aws_db_parameter_group" "rerank" {
  name   = "${local.name}-pg16"
  family = "postgres16"

  parameter {
    name  = "maintenance_work_mem"
    value = var.db_maintenance_work_mem_kb
  }

  parameter {
    name  = "max_parallel_maintenance_workers"
    value = 4
  }

  parameter {
    name  = "work_mem"
    value = 65536
  }

  parameter {
    name  = "max_wal_size"
    value = 8192
  }

  parameter {
    name  = "checkpoint_timeout"
    value = 900
  }

  parameter {
    name  = "random_page_cost"
    value = "1.1"
  }

  parameter {
    name         = "max_connections"
    value        = 400
    apply_method = "pending-reboot"
  }
}

resource "aws_security_group" "db" {
  name        = "${local.name}-db"
  description = "PostgreSQL from the EKS nodes only"
  vpc_id      = module.vpc.vpc_id

  ingress {
    description     = "PostgreSQL from the cluster's nodes"
    from_port       = 5432
    to_port         = 5432
    protocol        = "tcp"
    security_groups = [module.eks.node_security_group_id]
  }
}

resource "aws_db_instance" "rerank" {
  identifier     = local.name
  engine         = "postgres"
  engine_version = "16"
  instance_class = var.db_instance_class

  allocated_storage     = var.db_storage_gb
  max_allocated_storage = var.db_storage_gb * 4
  storage_type          = "gp3"
  storage_encrypted     = true

  db_name  = "shop"
  username = "rerank"
  password = random_password.db.result

  db_subnet_group_name   = module.vpc.database_subnet_group_name
  vpc_security_group_ids = [aws_security_group.db.id]
  parameter_group_name   = aws_db_parameter_group.rerank.name

  multi_az                     = true
  backup_retention_period      = 7
  performance_insights_enabled = true
  deletion_protection          = true
  skip_final_snapshot          = false
  final_snapshot_identifier    = "${local.name}-final"
}
