"""Generated from proto/grpctunnel/admin/v1/admin.proto by scripts/gen_protos.py."""
