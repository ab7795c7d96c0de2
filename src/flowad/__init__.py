"""flowad: visual anomaly detection with normalizing flows."""
