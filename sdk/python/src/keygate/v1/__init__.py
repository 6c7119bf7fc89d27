"""Code generated from proto/keygate/v1 by sdk/generate.sh (buf). Do not edit the ``*_pb2*`` modules."""
