//! skiff-cli
