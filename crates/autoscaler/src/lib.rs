//! skiff-autoscaler
