"""Security layers of the service (spec §3): zero-trust policy, threat intelligence, rate limits,
anomaly detection, behavioural biometrics, the dead man's switch.

Modules here import nothing heavy (no FastAPI in the pure ones, never torch), so the CLI and the
federation server may use them.
"""
