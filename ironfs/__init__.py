"""ironfs: a FUSE passthrough that gives any S3 server per-bucket quotas."""

__version__ = "0.1.0"
