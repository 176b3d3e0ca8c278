"""Drift and tamper detection per camera: statistics, rules, references and the monitor (pure logic, no I/O except
`store`)."""
