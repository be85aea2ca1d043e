"""grpctunnel."""
