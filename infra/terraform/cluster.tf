# EKS: a CPU node group for Airflow and Dask, a GPU node group (scaled from zero, tainted) for training.
# Node labels ecom-rerank/pool=cpu|gpu match the nodeSelectors in infra/helm and docker/pod_templates/gpu.yaml.
module "eks" {
  source  = "terraform-aws-modules/eks/aws"
  version = "~> 20.24"

  cluster_name    = local.name
  cluster_version = var.kubernetes_version

  vpc_id     = module.vpc.vpc_id
  subnet_ids = module.vpc.private_subnets

  # The API is reachable from the VPC and, publicly, only from the operators' networks (var.api_allowed_cidrs).
  cluster_endpoint_private_access          = true
  cluster_endpoint_public_access           = length(var.api_allowed_cidrs) > 0
  cluster_endpoint_public_access_cidrs     = var.api_allowed_cidrs
  enable_cluster_creator_admin_permissions = true
  enable_irsa                              = true

  # The EFS CSI driver mounts RERANK_HOME (storage class `efs`, infra/k8s/rerank-home-pvc.yaml); its controller
  # gets its IAM rights through the service-account role below.
  cluster_addons = {
    aws-efs-csi-driver = {
      most_recent              = true
      service_account_role_arn = module.efs_csi_irsa.iam_role_arn
    }
  }

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
      # Scale from zero: the cluster autoscaler reads the label and taint of a group with no node from tags.
      tags = {
        "k8s.io/cluster-autoscaler/enabled"                              = "true"
        "k8s.io/cluster-autoscaler/node-template/label/ecom-rerank/pool" = "gpu"
        "k8s.io/cluster-autoscaler/node-template/taint/nvidia.com/gpu"   = "true:NoSchedule"
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

module "efs_csi_irsa" {
  source  = "terraform-aws-modules/iam/aws//modules/iam-role-for-service-accounts-eks"
  version = "~> 5.44"

  role_name             = "${local.name}-efs-csi"
  attach_efs_csi_policy = true

  oidc_providers = {
    main = {
      provider_arn               = module.eks.oidc_provider_arn
      namespace_service_accounts = ["kube-system:efs-csi-controller-sa"]
    }
  }
}
