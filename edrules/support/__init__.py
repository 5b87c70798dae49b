"""Support dashboards' logic: quarantine report, release/trust pages, header analyzer, policy wizard, traffic."""
