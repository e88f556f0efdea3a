"""Security layers of the HTTP service: anomaly detection, behavioural biometrics."""
