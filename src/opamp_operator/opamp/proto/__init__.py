"""Generated OpAMP messages (scripts/gen-proto); wire-identical to opamp-spec v0.18."""
