output "cluster_name" {
  description = "EKS cluster for the Airflow and Dask Helm releases."
  value       = module.eks.cluster_name
}

output "database_host" {
  description = "Host of the managed PostgreSQL (RERANK_DATABASE_URL, AIRFLOW_CONN_RERANK_POSTGRES)."
  value       = aws_db_instance.rerank.address
}

output "owner_database_url" {
  description = "libpq URI of the shop database as its owner: migrations only (secret rerank-owner)."
  value       = "postgresql://${aws_db_instance.rerank.username}:${random_password.db.result}@${aws_db_instance.rerank.address}:5432/shop?sslmode=require"
  sensitive   = true
}

output "pipeline_database_url" {
  description = "libpq URI as the pipeline login rerank_pipeline (secret rerank-env: Airflow, Dask, the refresher)."
  value       = "postgresql://rerank_pipeline:${random_password.pipeline_db.result}@${aws_db_instance.rerank.address}:5432/shop?sslmode=require"
  sensitive   = true
}

output "pipeline_db_password" {
  description = "Password of rerank_pipeline (RERANK_PIPELINE_DB_PASSWORD for `rerank db migrate --create-logins`)."
  value       = random_password.pipeline_db.result
  sensitive   = true
}

output "app_db_password" {
  description = "Password of rerank_app, the readers' login (RERANK_APP_DB_PASSWORD for --create-logins)."
  value       = random_password.app_db.result
  sensitive   = true
}

output "rerank_home_efs_id" {
  description = "EFS file system behind the rerank-home PersistentVolume (RERANK_HOME=/opt/rerank/home)."
  value       = aws_efs_file_system.rerank_home.id
}

output "airflow_log_bucket" {
  description = "S3 bucket for Airflow's remote task logs."
  value       = aws_s3_bucket.logs.bucket
}
