"""Built-in device profiles (YAML package data); see :mod:`edgedistill.devices.profile`."""
