"""Live fan-out to subscribers (agent-assist dashboards): the hub, its endpoints, and who may watch what."""
