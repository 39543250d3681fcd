variable "region" {
  description = "AWS region of every resource."
  type        = string
  default     = "eu-central-1"
}

variable "environment" {
  description = "Name of the deployment (prod, staging); part of every resource name."
  type        = string
  default     = "prod"
}

variable "vpc_cidr" {
  description = "CIDR of the VPC."
  type        = string
  default     = "10.40.0.0/16"
}

variable "api_allowed_cidrs" {
  description = "Networks allowed to reach the EKS API endpoint publicly (operators' VPN, CI); empty: private only."
  type        = list(string)

  validation {
    condition     = !contains(var.api_allowed_cidrs, "0.0.0.0/0") && alltrue([for c in var.api_allowed_cidrs : can(cidrnetmask(c))])
    error_message = "api_allowed_cidrs takes IPv4 CIDRs and never 0.0.0.0/0 (the API would be open to every address)."
  }
}

variable "kubernetes_version" {
  description = "EKS control-plane version."
  type        = string
  default     = "1.33"
}

variable "cpu_node_type" {
  description = "Instance type of the CPU node group (Airflow, Dask scheduler and workers)."
  type        = string
  default     = "m7i.2xlarge"
}

variable "cpu_nodes" {
  description = "Min, desired and max size of the CPU node group."
  type        = object({ min = number, desired = number, max = number })
  default     = { min = 2, desired = 4, max = 12 }
}

variable "gpu_node_type" {
  description = "Instance type of the GPU node group (ranker training)."
  type        = string
  default     = "g6.xlarge"
}

variable "gpu_nodes_max" {
  description = "Largest size of the GPU node group; it scales from zero when training is scheduled."
  type        = number
  default     = 1
}

variable "db_instance_class" {
  description = "RDS instance class of the shop / recsys / Airflow metadata PostgreSQL."
  type        = string
  default     = "db.r7g.xlarge"
}

variable "db_storage_gb" {
  description = "Allocated storage in GB (grows automatically up to 4x)."
  type        = number
  default     = 200
}

variable "db_maintenance_work_mem_kb" {
  description = "maintenance_work_mem in kB: index builds of a run's recs table before the swap."
  type        = number
  default     = 1048576
}
