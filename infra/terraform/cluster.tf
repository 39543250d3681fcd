# EKS: a CPU node group for Airflow and Dask, a GPU node group (scaled from zero, tainted) for training.
# Node labels ecom-rerank/pool=cpu|gpu match the nodeSelectors in infra/helm and docker/pod_templates/gpu.yaml.
module "eks" {
  source  = "terraform-aws-modules/eks/aws"
  version = "~> 20.24"

  cluster_name    = local.name
  cluster_version = var.kubernetes_version

  vpc_id     = module.vpc.vpc_id
  subnet_ids = module.vpc.private_subnets

  cluster_endpoint_public_access           = true
  enable_cluster_creator_admin_permissions = true

  eks_managed_node_groups = {
    cpu = {
      instance_types = [var.cpu_node_type]
      min_size       = var.cpu_nodes.min
      desired_size   = var.cpu_nodes.desired
      max_size       = var.cpu_nodes.max
      labels = {
        "ecom-rerank/pool" = "cpu"
      }
    }

    gpu = {
      ami_type       = "AL2023_x86_64_NVIDIA"
      instance_types = [var.gpu_node_type]
      min_size       = 0
      desired_size   = 0
      max_size       = var.gpu_nodes_max
      labels = {
        "ecom-rerank/pool" = "gpu"
      }
      taints = {
        gpu = {
          key    = "nvidia.com/gpu"
          value  = "true"
          effect = "NO_SCHEDULE"
        }
      }
    }
  }
}
