"""The gateway admin service (grpctunnel.admin.v1): generated code only."""
