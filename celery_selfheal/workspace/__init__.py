"""Git workspaces, checkpoints and verified replay. The only package that runs git."""
