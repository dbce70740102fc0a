"""Federation: race-free opens under a mount, the mount runtime, lookup across mounts, health."""
