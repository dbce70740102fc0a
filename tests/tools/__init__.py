"""Test tools: faultfs, a fault-injecting FUSE passthrough filesystem, and its fixtures."""
