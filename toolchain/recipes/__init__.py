"""Built-in recipes (YAML package data); ``edgedistill recipes`` lists them."""
