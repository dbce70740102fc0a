"""Operations: check and locate, operator endpoints, metrics, access log."""
