"""The embedded control plane: Fireworks' REST subset over real trainer and deployment processes."""
