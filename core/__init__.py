"""Small shared pieces every layer may use: the named-thing registry and atomic file I/O."""
