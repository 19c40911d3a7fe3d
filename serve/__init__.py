"""The online driver: Ray Serve deployments around the stage classes, behind one FastAPI ingress."""
