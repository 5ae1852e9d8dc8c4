"""What ext_authz, the translator and the stack's demo upstream must agree on, defined once: the identity headers
ext_authz sets and the key fingerprint (identity.py), and how a true/false setting is read (settings.py).
Pure and dependency-free: every keyrelay process imports it."""
