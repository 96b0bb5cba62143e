//! skiff-api
