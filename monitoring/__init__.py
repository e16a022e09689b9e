"""Monitoring of the private swarm: a health service that reads the DHT into snapshots and serves
metrics, /api/v1/state and a status page, plus Prometheus rules, Alertmanager and Grafana files."""
