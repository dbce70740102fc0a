"""HTTP semantics (RFC 9110): names, validators, ranges, responses, media types."""
