"""Integrations with other libraries (optional dependencies): `genaccel.integrations.diffusers`."""
