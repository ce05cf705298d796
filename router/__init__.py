"""The fleetlm router: one OpenAI endpoint in front of many engine replicas (no torch)."""
